"""The search on a real Ray cluster on loopback: a head and a worker node that carries a device class, with
Ray's token authentication. Same keys, manifests and winner as in this process; the benchmark runs on the
device-class node; a node that dies mid-benchmark fails the search cleanly, never hangs it."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import invoke
from tests.registry_server import free_port

if importlib.util.find_spec("ray") is None:
    pytest.skip("the ray extra is not installed", allow_module_level=True)
# ray itself is imported only once the cluster's token is in the environment: it reads its auth mode then

SPACE = {"recipe.precision": ["fp32", "int8-static"]}


def _ray(*args, env) -> str:
    exe = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _start_worker(head_port: int, worker_port: int, env) -> None:
    """A worker node of 1 CPU that carries ``device:rpi4``, found again by its node-manager port."""
    _ray("start", f"--address=127.0.0.1:{head_port}", f"--node-manager-port={worker_port}", "--num-cpus=1",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats", '--resources={"device:rpi4": 1}', env=env)  # fmt: skip


def _kill_node(worker_port: int) -> None:
    for pid in subprocess.run(["pgrep", "-f", f"node_manager_port={worker_port}"], capture_output=True,
                              text=True).stdout.split():  # fmt: skip
        os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster():
    """A head (no device) and one worker node with ``device:rpi4``, loopback only, token auth."""
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                        "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    port, worker_port = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    _ray("start", "--head", f"--port={port}", "--include-dashboard=false", *common, env=env)
    _start_worker(port, worker_port, env)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update({k: env[k] for k in saved})  # this process is the driver: it needs the token too
    try:
        yield {"address": f"127.0.0.1:{port}", "port": port, "worker_port": worker_port, "env": env}
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], env=env, capture_output=True)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _targets(folder: Path, loose_targets: Path, **extra) -> Path:
    profile = yaml.safe_load((loose_targets / "cpu.yaml").read_text())
    profile["search"] = {"objective": "p50_latency", "space": SPACE, "bench_seconds": 1, "budget_minutes": 10}
    profile.update(extra)
    folder.mkdir(exist_ok=True)
    (folder / "edge.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _search(trained, keypair, targets, work: Path, *extra):
    return invoke("build", "--search", "--target", "edge", "--model", str(trained.path), "--key", str(keypair[0]),
                  "--targets-dir", str(targets), "--out", str(work / "bundles"), "--cache-dir", str(work / "cache"),
                  "--search-dir", str(work / "search"), "--no-track", *extra)  # fmt: skip


def _manifests(work: Path) -> dict:
    out = {}
    for m in (work / "cache").rglob("manifest.json"):
        if m.parent.parent.name == "builds":
            continue
        d = json.loads(m.read_text())
        out[m.parent.name] = ({f: v["sha256"] for f, v in d["files"].items()}, d["validation"]["parity"])
    return out


def test_a_search_through_ray_gives_the_same_keys_manifests_and_winner(
    cluster, trained, keypair, loose_targets, tmp_path
):
    targets = _targets(tmp_path / "t", loose_targets)
    local = _search(trained, keypair, targets, tmp_path / "local")
    assert local.exit_code == 0, local.output
    # the same candidates' benchmark, shared: the winner then depends only on what was built
    bench = next((tmp_path / "local" / "cache").rglob("bench-*.json"))
    dest = tmp_path / "ray" / "cache" / bench.relative_to(tmp_path / "local" / "cache")
    dest.parent.mkdir(parents=True)
    shutil.copyfile(bench, dest)
    remote = _search(trained, keypair, targets, tmp_path / "ray", "--executor", "ray", "--ray-address",
                     cluster["address"])  # fmt: skip
    assert remote.exit_code == 0, remote.output
    assert "candidate build(s) done on the cluster" in remote.stderr
    a = json.loads((tmp_path / "local" / "search" / "edge" / "search.json").read_text())
    b = json.loads((tmp_path / "ray" / "search" / "edge" / "search.json").read_text())
    assert b["executor"] == "ray" and a["executor"] == "local"
    assert [(c["key"], c["status"]) for c in a["candidates"]] == [(c["key"], c["status"]) for c in b["candidates"]]
    assert [c["key"] for c in a["candidates"] if c["winner"]] == [c["key"] for c in b["candidates"] if c["winner"]]
    assert _manifests(tmp_path / "local") == _manifests(tmp_path / "ray")  # same files, same parity


def _bundle_files(out: Path) -> dict:
    found = {}
    for m in sorted(out.rglob("manifest.json")):
        d = json.loads(m.read_text())
        found[d["target"]] = ({f: v["sha256"] for f, v in d["files"].items()}, d["validation"]["parity"], d["version"])
    return found


def test_several_targets_build_as_ray_tasks_into_the_bundles_a_local_build_writes(
    cluster, trained, keypair, loose_targets, tmp_path
):
    def build(work: Path, *extra):
        return invoke("build", "--target", "cpu", "--target", "openvino", "--model", str(trained.path), "--key",
                      str(keypair[0]), "--targets-dir", str(loose_targets), "--out", str(work / "bundles"),
                      "--cache-dir", str(work / "cache"), "--no-track", *extra)  # fmt: skip

    local = build(tmp_path / "local")
    assert local.exit_code == 0, local.output
    remote = build(tmp_path / "ray", "--executor", "ray", "--ray-address", cluster["address"])
    assert remote.exit_code == 0, remote.output
    assert "2 of 2 target build(s) done on the cluster" in remote.stderr
    a, b = _bundle_files(tmp_path / "local" / "bundles"), _bundle_files(tmp_path / "ray" / "bundles")
    assert set(a) == {"cpu", "openvino"} and a == b  # same files, same parity, same version
    assert len(list((tmp_path / "ray" / "bundles").rglob("*.tar.gz"))) == 2  # published (packed) here
    assert not list((tmp_path / "ray" / "cache" / "staging").iterdir())  # staging folders cleaned up


def test_the_benchmark_runs_on_the_device_class_node(cluster, trained, keypair, loose_targets, tmp_path):
    targets = _targets(tmp_path / "t", loose_targets, device_class="rpi4")
    r = _search(trained, keypair, targets, tmp_path / "w", "--executor", "ray", "--ray-address", cluster["address"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "w" / "search" / "edge" / "search.json").read_text())
    import ray

    ray.init(address=cluster["address"], ignore_reinit_error=True, logging_level="ERROR", _node_ip_address="127.0.0.1")
    rpi = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "device:rpi4" in n["Resources"]]
    assert summary["bench_node"]["node_id"] in rpi and summary["bench_node"]["device_class"] == "rpi4"
    manifest = json.loads(next((tmp_path / "w" / "bundles").rglob("manifest.json")).read_text())
    assert manifest["latency"]["node"]["node_id"] == summary["bench_node"]["node_id"]
    assert manifest["latency"]["node"]["host"]["cores"] >= 1


def test_a_device_node_that_dies_mid_benchmark_fails_the_search_and_never_hangs(cluster, trained, keypair,
                                                                                loose_targets, tmp_path):  # fmt: skip
    targets = _targets(tmp_path / "t", loose_targets, device_class="rpi4")
    profile = yaml.safe_load((targets / "edge.yaml").read_text())
    profile["search"]["bench_seconds"] = 20
    (targets / "edge.yaml").write_text(yaml.safe_dump(profile))
    os.environ["FACTORY_RAY_PLACE_SECONDS"] = "5"
    os.environ["FACTORY_RAY_TASK_SECONDS"] = "90"

    def kill_the_board():
        time.sleep(6)  # while it measures (after the builds)
        _kill_node(cluster["worker_port"])

    killer = threading.Thread(target=kill_the_board)
    started = time.monotonic()
    killer.start()
    try:
        r = _search(trained, keypair, targets, tmp_path / "w", "--executor", "ray", "--ray-address",
                    cluster["address"], "--remeasure")  # fmt: skip
    finally:
        killer.join()
        os.environ.pop("FACTORY_RAY_PLACE_SECONDS")
        os.environ.pop("FACTORY_RAY_TASK_SECONDS")
    assert time.monotonic() - started < 150  # failed in bounded time
    assert r.exit_code == 1, r.output
    assert "benchmark on a rpi4 node failed" in r.output


def test_a_worker_node_killed_while_it_builds_has_its_candidates_retried_and_recorded(
    cluster, trained, keypair, loose_targets, tmp_path
):
    """Both nodes build (1 CPU each); the worker is killed as soon as a build starts: its candidate is retried on
    the head, the search completes, and the report says which live node built each candidate."""
    import ray

    port = free_port()  # a fresh worker node (the test before killed the first one)
    _start_worker(cluster["port"], port, cluster["env"])
    targets = _targets(tmp_path / "t", loose_targets)
    cache = tmp_path / "w" / "cache"

    def kill_when_building():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(cache.rglob("*.partial")):
            time.sleep(0.05)
        _kill_node(port)

    killer = threading.Thread(target=kill_when_building)
    started = time.monotonic()
    killer.start()
    try:
        r = _search(trained, keypair, targets, tmp_path / "w", "--executor", "ray", "--ray-address",
                    cluster["address"])  # fmt: skip
    finally:
        killer.join()
    assert time.monotonic() - started < 240
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "w" / "search" / "edge" / "search.json").read_text())
    ray.init(address=cluster["address"], ignore_reinit_error=True, logging_level="ERROR", _node_ip_address="127.0.0.1")
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    built = [c for c in summary["candidates"] if c.get("built_on")]
    assert len(built) == len(SPACE["recipe.precision"]) and all(c["status"] != "failed" for c in built)
    assert {c["built_on"] for c in built} <= alive  # the killed node's work was redone on a live one
