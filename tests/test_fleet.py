"""Devices, telemetry and health-driven rollouts, end to end against the real service on loopback."""

import json
import re
import shutil

import httpx
import numpy as np
import pytest

from factory.bundle.signing import generate_keys, load_private_key, load_public_key
from factory.pipeline.fleet_demo import _retag as retag
from tests.conftest import DBS, build_cpu_release, db_url
from tests.registry_server import start_registry

WINDOW = 2


@pytest.fixture(scope="module", params=DBS)
def fleet_env(request, tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    """A registry with release 1.0.0 stable, 1.1.0 (healthy) and 1.2.0 (the one that goes wrong) published."""
    from factory.registry.auth import create_token

    tmp = tmp_path_factory.mktemp("fleet")
    base = build_cpu_release(trained, synth_ds, keypair, loose_targets, tmp / "bundles")
    key = load_private_key(keypair[0])
    folders = {"1.0.0": base}
    for v in ("1.1.0", "1.2.0"):
        folders[v] = tmp / "re" / v / "cpu"
        retag(base, folders[v], v, key, "test re-release")
    # drift limits far above the tiny model's noise (its reference profile has 29 images), below a real shift
    telemetry = {"window_seconds": WINDOW, "evaluate_seconds": 0.0, "retrain_windows": 3, "retrain_max_psi": 3.0,
                 "retrain_max_js": 1.0}  # fmt: skip
    srv, settings, engine, admin, _ = start_registry(tmp, keypair[1], telemetry, database=db_url(request.param, tmp))
    fleet_pub = tmp / "fleet.pub"

    def device_token(device_id: str) -> str:
        """A token bound to one device (what `factory device enroll` gives a device)."""
        with engine.begin() as conn:
            return create_token(conn, f"device:{device_id}", "device", device_id)

    from factory.device.client import RegistryClient

    client = RegistryClient(srv.url, admin)
    for f in folders.values():
        client.publish(f)
    model = trained.card["name"]
    client.create_rollout(
        {"name": "base", "release": {"name": model, "version": "1.0.0"}, "stages": [{"percent": 100}]}
    )
    client.act("base", "advance", "first release")
    yield {
        "server": srv,
        "client": client,
        "admin": admin,
        "device_token": device_token,
        "model": model,
        "tmp": tmp,
        "folders": folders,
        "fleet_pub": fleet_pub,
        "dataset": synth_ds,
        "settings": settings,
    }
    client.close()
    srv.stop()


def _device_client(env, device_id):
    from factory.device.client import RegistryClient

    return RegistryClient(env["server"].url, env["device_token"](device_id))


def _summary(env, device_id, version="1.0.0", **changes):
    from factory.device.telemetry import Window

    w = Window(device_id, "cpu", [], {"name": env["model"], "version": version, "target": "cpu"}, 8, seconds=WINDOW)
    for i in range(5):
        w.add(1.0 + i, {"confidence": 0.86, "cls": i}, (120.0, 40.0))
    s = w.summary()
    s.update(changes)
    return s


def _post(env, body, raw=None, token=None):
    return httpx.post(
        env["server"].url + "/v1/telemetry",
        headers={"Authorization": f"Bearer {token or env['admin']}", "Content-Type": "application/json"},
        content=raw if raw is not None else json.dumps(body),
    )


def _stored(env) -> int:
    import sqlalchemy as sa

    from factory.registry import db

    with db.engine_for(env["settings"]["database"]).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.telemetry)).scalar_one()


def test_bad_telemetry_is_rejected_and_nothing_is_stored(fleet_env):
    env = fleet_env
    with _device_client(env, "tele-1") as c:
        c.request("POST", "/v1/devices", json={"device_id": "tele-1", "target": "cpu", "tags": []}, ok=(201,))
    before = _stored(env)
    good = _summary(env, "tele-1")
    assert _post(env, good).status_code == 201
    cases = {
        "malformed": (None, b"{not json", 422),
        "wrong shape": (_summary(env, "tele-1", latency_ms=[1, 2, 3]), None, 422),
        "inconsistent": (_summary(env, "tele-1", count=1), None, 422),
        "oversized": (_summary(env, "tele-1", tags=["x" * 90] * 50) | {"pad": "y" * 70000}, None, 413),
        "replayed": (good, None, 409),
        "unknown device": (_summary(env, "ghost-7"), None, 404),
        "never assigned": (_summary(env, "tele-1", version="9.9.9"), None, 409),
    }
    for name, (body, raw, status) in cases.items():
        r = _post(env, body, raw)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["detail"], name
    assert _stored(env) == before + 1
    assert httpx.get(env["server"].url + "/healthz").json()["status"] == "ok"


def test_agent_pulls_verifies_serves_and_reports(fleet_env, keypair, tmp_path):
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient
    from factory.device.sources import frames

    env = fleet_env
    with RegistryClient(env["server"].url, env["device_token"]("agent-1")) as c:
        agent = Agent(
            c,
            model=env["model"],
            device_id="agent-1",
            target="cpu",
            tags=["lab"],
            state_dir=tmp_path / "state",
            bundle_key=load_public_key(keypair[1]),
            window_seconds=WINDOW,
        )
        status = agent.sync()
        assert status.startswith("switched None ->") and agent.release_key.endswith("/1.0.0/cpu")
        assert agent.sync() == "unchanged (304)"  # ETag-aware polling
        counts = agent.run(frames(str(env["dataset"] / "images")), poll_seconds=60, max_frames=12)
        assert counts["frames"] == 12
        assert list((tmp_path / "state" / "outbox").glob("*.json")) == []  # uploaded
        assert json.loads((tmp_path / "state" / "active.json").read_text())["release"].endswith("1.0.0/cpu")


def test_agent_keeps_serving_when_the_registry_is_down(fleet_env, keypair, tmp_path):
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient

    env = fleet_env
    trusted = load_public_key(keypair[1])
    token = env["device_token"]("agent-2")
    with RegistryClient(env["server"].url, token) as c:
        agent = Agent(
            c,
            model=env["model"],
            device_id="agent-2",
            target="cpu",
            tags=[],
            state_dir=tmp_path / "s",
            bundle_key=trusted,
            window_seconds=WINDOW,
        )
        assert agent.sync().startswith("switched")
    with RegistryClient("http://127.0.0.1:9", token, timeout=2) as dead:  # nothing listens there
        agent.client = dead
        status = agent.sync()
        assert status.startswith("kept") and "unreachable" in status
        frame = np.full((72, 96, 3), 128, np.uint8)
        label, conf = agent.infer(frame)
        assert label in agent.manifest.labels and 0 < conf <= 1
        agent.close_window()
        assert agent.upload()["waiting"] == 1  # buffered on disk while offline


def test_a_tampered_bundle_is_never_activated(fleet_env, tmp_path):
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient

    env = fleet_env
    other, other_pub = generate_keys(tmp_path / "other")
    with RegistryClient(env["server"].url, env["device_token"]("agent-3")) as c:
        agent = Agent(
            c,
            model=env["model"],
            device_id="agent-3",
            target="cpu",
            tags=[],
            state_dir=tmp_path / "s",
            bundle_key=load_public_key(other_pub),
            window_seconds=WINDOW,
        )
        status = agent.sync()  # the bundle is signed by the factory key, not the one this device trusts
        assert status.startswith("kept None") and "not by the trusted key" in status
        assert agent.runner is None and not (tmp_path / "s" / "active.json").exists()


def _windows_until(fleet, client, rollout: str, status: str, limit: int, history: list | None = None) -> int:
    """Simulate one window at a time until ``rollout`` reaches ``status`` (or ``limit``); windows used."""
    for n in range(1, limit + 1):
        rows = fleet.simulate(1, inferences=30)
        if history is not None:
            history += rows
        if client.rollout(rollout)["status"] == status:
            return n
    return limit


def test_health_driven_rollouts_end_to_end(fleet_env):
    """1.1.0 is healthy and reaches 100%; 1.2.0 is 30% slower and is rolled back within two windows."""
    from factory.device.assign import assign
    from factory.device.fleetstate import verify_state
    from factory.device.simulate import Fleet, Knobs, load_images

    env = fleet_env
    client, model = env["client"], env["model"]
    stages = [
        {"percent": 20, "min_devices_reporting": 3},
        {"percent": 60, "min_devices_reporting": 3},
        {"percent": 100},
    ]
    # the tiny test model's reference profile comes from 29 validation images: drift figures are noise here
    health = {"min_inferences": 40, "windows_to_halt": 2, "max_psi": 50.0, "max_js": 1.0}
    fleet = Fleet(
        client,
        model=model,
        devices=60,
        targets=["cpu"],
        knobs=Knobs(slow_release="1.2.0", slowdown=1.3, retry_share=0.3, latency_model_ms=0.5),
        images=load_images(str(env["dataset"])),
        cache=env["tmp"] / "dev-cache",
        window_seconds=WINDOW,
    )
    client.create_rollout(
        {"name": "good", "release": {"name": model, "version": "1.1.0"}, "stages": stages, "health": health}
    )
    history = []
    _windows_until(fleet, client, "good", "completed", 8, history)
    assert client.rollout("good")["status"] == "completed", [h["decisions"] for h in history]
    client.create_rollout(
        {"name": "bad", "release": {"name": model, "version": "1.2.0"}, "stages": stages, "health": health}
    )
    windows = _windows_until(fleet, client, "bad", "rolled_back", 6)
    assert client.rollout("bad")["status"] == "rolled_back"
    assert windows <= 2
    state = verify_state(client.fleet_manifest(), load_public_key(env["fleet_pub"]))
    assert all(assign(state, model, d.device_id, "cpu").release["version"] == "1.1.0" for d in fleet.devices)
    entry = [a for a in client.audit("bad") if a["action"] == "rollout.rollback"][0]
    assert entry["actor"] == "monitor" and any(
        "p95" in v for w in entry["detail"]["evidence"]["windows"] for v in w["violations"]
    )
    # forced retries happened and nothing was counted twice
    import sqlalchemy as sa

    from factory.registry import db

    with db.engine_for(env["settings"]["database"]).connect() as conn:
        rows = conn.execute(sa.select(db.telemetry.c.idempotency_key)).all()
    assert len(rows) == len({r[0] for r in rows})
    auth = {"Authorization": f"Bearer {env['admin']}"}
    metrics = httpx.get(env["server"].url + "/metrics", headers=auth).text
    assert "factory_release_latency_p95_ms" in metrics and "factory_telemetry_summaries_total" in metrics
    report = httpx.get(env["server"].url + "/v1/health", headers=auth).json()
    bad = next(r for r in report["rollouts"] if r["name"] == "bad")
    assert bad["status"] == "rolled_back" and bad["targets"]["cpu"]["windows"]


def test_status_page_in_a_headless_browser(fleet_env, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on this machine (CI installs Debian's chromium)")
    import subprocess

    url = fleet_env["server"].url + "/status#token=" + fleet_env["admin"]
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "Fleet status" in dom and "loading..." not in dom
    assert 'data-name="base"' in dom and "stage 1/1" in dom
    shot = tmp_path / "status.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", url], capture_output=True, timeout=120
    )
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_input_drift_halts_a_rollout_and_sustained_drift_triggers_retraining(fleet_env):
    from factory.device.assign import assign
    from factory.device.fleetstate import verify_state
    from factory.device.simulate import Fleet, Knobs, load_images

    env = fleet_env
    client, model = env["client"], env["model"]
    images = load_images(str(env["dataset"]))
    # the tiny model's 29-image reference makes clean windows read psi ~2 (noise); 0.3x darkening reads ~16
    health = {"min_inferences": 40, "windows_to_halt": 2, "max_psi": 5.0, "max_js": 1.0, "max_latency_p95_ratio": 5.0}
    fleet = Fleet(
        client,
        model=model,
        devices=60,
        targets=["cpu"],
        knobs=Knobs(dark_release="1.2.0", darkness=0.3),
        images=images,
        cache=env["tmp"] / "dev-cache-2",
        window_seconds=WINDOW,
        seed=1,
    )
    client.create_rollout(
        {
            "name": "drifty",
            "release": {"name": model, "version": "1.2.0"},
            "stages": [{"percent": 30, "min_devices_reporting": 3}, {"percent": 100}],
            "health": health,
        }
    )
    windows = _windows_until(fleet, client, "drifty", "rolled_back", 5)
    assert client.rollout("drifty")["status"] == "rolled_back", json.dumps(client.audit("drifty"), indent=1)[:6000]
    assert windows <= 2  # halted within two evaluation windows
    state = verify_state(client.fleet_manifest(), load_public_key(env["fleet_pub"]))
    assert all(assign(state, model, d.device_id, "cpu").release["version"] != "1.2.0" for d in fleet.devices)
    entry = [a for a in client.audit("drifty") if a["action"] == "rollout.rollback"][0]
    assert any("psi_brightness" in v for w in entry["detail"]["evidence"]["windows"] for v in w["violations"])
    # now the whole fleet sees darker images on the stable release: a retraining trigger names the lineage
    dark = Fleet(
        client,
        model=model,
        devices=60,
        targets=["cpu"],
        knobs=Knobs(dark_share=1.0, darkness=0.3),
        images=images,
        cache=env["tmp"] / "dev-cache-3",
        window_seconds=WINDOW,
        seed=2,
    )
    dark._clock = fleet._clock
    triggers = []
    for _ in range(5):
        row = dark.simulate(1, inferences=30)[-1]
        triggers += row["triggers"]
        if triggers:
            break
    stable = client.request("GET", "/v1/fleet-manifest").json()["payload"]["stable"]
    assert triggers and triggers[0]["release"] == stable[f"{model}/cpu"]
    assert triggers[0]["start_from"]["dataset_hash"] and triggers[0]["start_from"]["training_run"]
    health = httpx.get(env["server"].url + "/v1/health", headers={"Authorization": f"Bearer {env['admin']}"})
    assert health.json()["triggers"]


def _dom(chromium: str, url: str, profile) -> str:
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=5000"]  # fmt: skip
    return subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


def test_history_pages_keep_the_evidence_days_later(fleet_env, tmp_path):
    """Two days after the rollouts (telemetry far outside the health report's window), the rollout and
    release pages still show why 1.2.0 was rolled back (rule, measured value, limit) and charts with points;
    the snapshots say the same with no server."""
    import sqlalchemy as sa

    from factory.registry import db
    from factory.registry.history import write_snapshots

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on this machine (CI installs Debian's chromium)")
    env = fleet_env
    engine = db.engine_for(env["settings"]["database"])
    with engine.begin() as conn:  # everything happened two days ago
        conn.execute(db.telemetry.update().values(window_start=db.telemetry.c.window_start - 2 * 86400,
                                                  received_at=db.telemetry.c.received_at - 2 * 86400))  # fmt: skip
        conn.execute(db.windows.delete())
    auth = {"Authorization": f"Bearer {env['admin']}"}
    httpx.post(env["server"].url + "/v1/evaluate", headers=auth).raise_for_status()  # rolls the windows up
    history = httpx.get(env["server"].url + "/v1/history/rollouts/bad", headers=auth).json()
    assert history["status"] == "rolled_back" and len(history["targets"]["cpu"]["series"]) >= 2
    model = env["model"]
    for path in ("/status/rollouts/bad", f"/status/releases/{model}/1.2.0/cpu"):
        dom = _dom(chromium, env["server"].url + path + "#token=" + env["admin"], tmp_path / "profile")
        assert "rollout.rollback" in dom, dom[:2000]
        rule = [line for line in dom.split('class="bad rule">')[1:]]
        assert (
            rule and re.search(r"1\.\d\dx the previous release", rule[0]) and "limit 1.2x" in rule[0]
        )  # rule, value, limit
        assert 'class="chart"' in dom and dom.count('class="point"') >= 2 and 'class="threshold"' in dom
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.windows)).scalar() > 0
    pages = write_snapshots(engine, WINDOW, tmp_path / "snap")
    status = (tmp_path / "snap" / "status.html").read_text()
    assert "https://" not in status and "<script src" not in status  # self-contained
    release_page = next(p for p in pages if p.name.startswith("release-") and "1.2.0" in p.name)
    dom = _dom(chromium, release_page.as_uri(), tmp_path / "profile2")
    assert "rollout.rollback" in dom and dom.count('class="point"') >= 2
    dom = _dom(chromium, (tmp_path / "snap" / "status.html").as_uri(), tmp_path / "profile3")
    assert 'data-name="bad"' in dom and "rollout-bad.html" in dom


def test_the_grafana_dashboard_reads_only_series_the_registry_exports(fleet_env):
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[1] / "deploy/grafana/fleet-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs.append(dash["templating"]["list"][0]["query"]["query"])
    names = {n for e in exprs for n in re.findall(r"factory_[a-z0-9_]+", e)}
    auth = {"Authorization": f"Bearer {fleet_env['admin']}"}
    metrics = httpx.get(fleet_env["server"].url + "/metrics", headers=auth).text
    exported = set(re.findall(r"^(factory_[a-z0-9_]+)", metrics, re.M))
    assert names and names <= exported, names - exported
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dash["panels"] if p["type"] != "row")
