"""The closed loop: opt-in field capture (consent, caps, hostile uploads), dataset versions, and the demo."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from factory.data.manifest import load_manifest
from tests.conftest import build_cpu_release, invoke

POLICY = {"when": {"random_rate": 1.0}, "max_per_device_per_day": 3, "max_bytes": 40_000, "retention_days": 1}


@pytest.fixture(scope="module")
def capture_env(tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    """A registry with 1.0.0 stable (a plan without capture) and 1.1.0 rolled out to tagged devices with one."""
    from factory.bundle.signing import load_private_key
    from factory.device.client import RegistryClient
    from factory.pipeline.fleet_demo import _retag as retag
    from tests.registry_server import start_registry

    tmp = tmp_path_factory.mktemp("capture")
    base = build_cpu_release(trained, synth_ds, keypair, loose_targets, tmp / "b")
    retag(base, tmp / "1.1.0", "1.1.0", load_private_key(keypair[0]), "test re-release")
    srv, settings, engine, admin, tokens = start_registry(tmp, keypair[1], devices=("cam-in", "cam-out"))
    client = RegistryClient(srv.url, admin)
    model = trained.card["name"]
    for folder in (base, tmp / "1.1.0"):
        client.publish(folder)
    client.create_rollout(
        {"name": "base", "release": {"name": model, "version": "1.0.0"}, "stages": [{"percent": 100}]}
    )
    client.act("base", "advance", "first release")
    yield {
        "srv": srv,
        "client": client,
        "tokens": tokens,
        "model": model,
        "engine": engine,
        "tmp": tmp,
        "settings": settings,
    }
    client.close()
    srv.stop()


def _agent(env, device_id, keypair, tags):
    from factory.bundle.signing import load_public_key
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient

    client = RegistryClient(env["srv"].url, env["tokens"][device_id])
    key = load_public_key(keypair[1])
    return Agent(
        client,
        model=env["model"],
        device_id=device_id,
        target="cpu",
        tags=tags,
        state_dir=env["tmp"] / device_id,
        bundle_key=key,
        window_seconds=60,
    )


def _stored(env) -> int:
    import sqlalchemy as sa

    from factory.registry import db

    with env["engine"].connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.captures)).scalar()


def _body(device_id, rollout, version, image: bytes, key="k1"):
    return {
        "idempotency_key": f"{device_id}:{key}",
        "device_id": device_id,
        "rollout": rollout,
        "release": {"name": "id-docs", "version": version, "target": "cpu"},
        "reason": "random",
        "output": {"label": "x", "confidence": 0.5},
        "image": base64.b64encode(image).decode(),
    }


def test_capture_needs_a_plan_that_asks_and_keeps_its_caps(capture_env, keypair, synth_ds):
    env = capture_env
    frames = [cv2.imread(str(p)) for p in sorted((synth_ds / "images").rglob("*.jpg"))[:8]]
    inside = _agent(env, "cam-in", keypair, ["capture-ok"])
    assert inside.sync().startswith("switched")
    for f in frames[:4]:  # 1.0.0's plan has no capture block: consent, nothing is kept
        inside.infer(f)
    assert inside.capture_policy is None and not inside.capturer.pending()
    plan = {
        "name": "field",
        "release": {"name": env["model"], "version": "1.1.0"},
        "stages": [{"percent": 100}],
        "cohort": {"tags": ["capture-ok"]},
        "capture": POLICY,
        "health": {"auto_advance": False},
    }
    env["client"].create_rollout(plan)
    assert inside.sync().startswith("switched") and inside.capture_policy == POLICY
    for f in frames:
        inside.infer(f)
    assert len(inside.capturer.pending()) == 3  # the device keeps the plan's cap of 3 a day
    up = inside.upload()
    assert up["captures"] == {"sent": 3, "dropped": 0, "waiting": 0} and _stored(env) == 3
    rows = env["client"].call("GET", "/v1/captures", params={"rollout": "field"})["captures"]
    assert len(rows) == 3 and {r["device_id"] for r in rows} == {"cam-in"} and rows[0]["reason"] == "random"
    assert (
        rows[0]["output"]["label"]
        in env["client"].call("GET", "/v1/releases/" + rows[0]["release"])["manifest"]["labels"]
    )
    # the device outside the rollout's cohort runs 1.0.0 without a capture policy
    outside = _agent(env, "cam-out", keypair, [])
    outside.sync()
    for f in frames[:3]:
        outside.infer(f)
    assert outside.capture_policy is None and not outside.capturer.pending()


def test_hostile_capture_uploads_are_refused_and_nothing_is_stored(capture_env):
    import httpx

    env = capture_env
    ok, jpeg = cv2.imencode(".jpg", np.full((60, 80, 3), 90, np.uint8))
    jpeg = jpeg.tobytes()
    before = _stored(env)

    def post(token, body):
        return httpx.post(env["srv"].url + "/v1/captures", json=body, headers={"Authorization": f"Bearer {token}"})

    r = post(env["tokens"]["cam-out"], _body("cam-out", "field", "1.1.0", jpeg))  # not in the plan's cohort
    assert r.status_code == 403 and "not asked to capture" in r.text
    r = post(env["tokens"]["cam-out"], _body("cam-out", "base", "1.0.0", jpeg))  # a plan without capture
    assert r.status_code == 403
    r = post(env["tokens"]["cam-out"], _body("cam-in", "field", "1.1.0", jpeg))  # speaking for another device
    assert r.status_code == 403 and "does not speak for" in r.text
    r = post(env["tokens"]["cam-in"], _body("cam-in", "field", "1.1.0", b"\xff\xd8\xff\xe0 not a jpeg", "k2"))
    assert r.status_code == 422 and "corrupt" in r.text
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)
    big = cv2.imencode(".png", noise)[1].tobytes()
    r = post(env["tokens"]["cam-in"], _body("cam-in", "field", "1.1.0", big, "k3"))
    assert r.status_code == 413
    r = post(env["tokens"]["cam-in"], _body("cam-in", "field", "1.1.0", jpeg, "k4"))  # a 4th frame today
    assert r.status_code == 429 and "3 captures a day" in r.text
    assert _stored(env) == before


def _png_bomb(side: int = 20000) -> bytes:
    """A 1-bit greyscale PNG of side x side zeros: about 48 KB that declares 400 M pixels (issue 31)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress((b"\x00" + bytes((side + 7) // 8)) * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _jpeg_bomb(side: int = 20000) -> bytes:
    """A real 16x16 JPEG whose frame header is rewritten to declare side x side."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def _peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in text.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def test_image_bombs_are_refused_from_their_header_sixteen_at_once(capture_env):
    """Issue 31: a 48 KB PNG declaring 20000 x 20000 took 4.5 s and 2.4 GB in cv2.imdecode before the size
    check. Now every bomb is refused from its header, and the server's peak memory barely moves."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from factory.imagesize import header_size

    env = capture_env
    png, jpeg = _png_bomb(16000), _jpeg_bomb(16000)  # 16000: fits this plan's max_bytes of 40,000
    assert len(png) < POLICY["max_bytes"] and len(_png_bomb()) < 50_000  # the reported one was 48,685 bytes
    assert header_size(png) == ("png", 16000, 16000) and header_size(jpeg) == ("jpeg", 16000, 16000)
    before = _peak_rss_mb(env["srv"].proc.pid)

    def post(i: int):
        body = _body("cam-in", "field", "1.1.0", png if i % 2 else jpeg, f"bomb{i}")
        return httpx.post(
            env["srv"].url + "/v1/captures",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {env['tokens']['cam-in']}"},
        )

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(post, range(16)))
    assert [r.status_code for r in replies] == [413] * 16, [r.text for r in replies]
    assert all("refused before decoding" in r.text for r in replies)
    assert _peak_rss_mb(env["srv"].proc.pid) - before < 200


def test_captures_export_as_a_cvat_task_and_become_a_dataset_version(capture_env, synth_ds, tmp_path):
    from factory.loop.captures import export_captures
    from factory.loop.versions import new_version

    env = capture_env
    summary = export_captures(env["client"], tmp_path / "task", rollout="field")
    assert len(summary["captures"]) == 3 and len(summary["capture_set"]) == 16
    tree = ET.parse(tmp_path / "task" / "annotations.xml")
    images = tree.getroot().findall("image")
    assert len(images) == 3 and all(im.find("tag") is not None for im in images)  # pre-annotated by the model
    parent = load_manifest(synth_ds)
    bad = ET.parse(tmp_path / "task" / "annotations.xml")
    bad.getroot().findall("image")[0].find("tag").set("label", "library-card")
    bad.getroot().findall("image")[1].remove(bad.getroot().findall("image")[1].find("tag"))
    bad.write(tmp_path / "bad.xml")
    from factory.errors import DataError

    with pytest.raises(DataError, match="2 problem") as err:
        new_version(synth_ds, tmp_path / "task", tmp_path / "v-bad", annotations=tmp_path / "bad.xml")
    assert "library-card" in str(err.value) and "no class" in str(err.value)
    assert not (tmp_path / "v-bad").exists()
    v2 = new_version(synth_ds, tmp_path / "task", tmp_path / "v2")
    old = {r.sha256: r.split for r in parent.files}
    assert all(old[r.sha256] == r.split for r in v2.files if r.slice is None)  # no old file moved
    field = v2.source["field_slice"]
    assert len([r for r in v2.files if r.slice == field]) == 3
    assert v2.source["parent"]["dataset_hash"] == parent.dataset_hash
    assert v2.source["capture_set"] == summary["capture_set"]
    assert load_manifest(tmp_path / "v2").dataset_hash == v2.dataset_hash != parent.dataset_hash


def test_a_plan_with_a_bad_capture_block_is_refused():
    from factory.errors import ConfigError
    from factory.registry.rollouts import check_plan

    plan = {"name": "x", "release": {"name": "m", "version": "1.0.0"}, "stages": [{"percent": 100}]}
    for capture, words in (
        ({"when": {}}, "at least one"),
        (POLICY | {"max_bytes": 10**9}, "max_bytes"),
        (POLICY | {"when": {"max_confidence": 2}}, "max_confidence"),
    ):
        with pytest.raises(ConfigError, match=words):
            check_plan(plan | {"capture": capture})


@pytest.mark.slow
def test_the_loop_demo_closes_the_loop(tmp_path):
    result = invoke("loop", "demo", "--out", str(tmp_path / "demo"), "--devices", "24", "--epochs", "6")
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert s["simulated"]["annotator"] is True and "SIMULATED" in result.output
    assert s["captures"]["uploaded"] > 0 and s["captures"]["refused"] == 0
    a = s["accuracy"]
    assert a["drifted_slice_after"] > a["drifted_slice_before"] + 0.1
    assert s["psi_before"]["psi_brightness"] > 0.25 > s["psi_after"]["psi_brightness"]
    assert s["rollout_status"] == "completed"
    steps = [link["step"] for link in s["lineage_chain"]]
    assert steps == [
        "telemetry window",
        "release",
        "training run",
        "dataset version",
        "parent dataset",
        "capture set",
        "commit",
    ]
    actions = [e["action"] for e in s["audit"]]
    for action in ("retrain.trigger", "loop.start", "loop.retrain", "loop.gate", "retrain.closed", "loop.rollout"):
        assert action in actions


def test_a_device_captures_when_its_own_frames_drift_and_keeps_its_cap(tmp_path):
    from factory.device.capture import Capturer
    from factory.stats import BRIGHTNESS_EDGES, histogram

    reference = {
        "brightness": {
            "edges": BRIGHTNESS_EDGES,
            "counts": histogram([120.0 + i % 20 for i in range(200)], BRIGHTNESS_EDGES),
        }
    }
    policy = {"when": {"drifting": 0.25}, "max_per_device_per_day": 5, "max_bytes": 60_000, "retention_days": 1}
    cap = Capturer(tmp_path / "captures", "cam-1", seed=0)
    frame = np.full((48, 64, 3), 40, np.uint8)
    release = {"name": "m", "version": "1.0.0", "target": "cpu"}
    where = {"release": release, "rollout": "r", "reference": reference, "window_start": None, "now": 1_000_000.0}
    kept = [
        cap.consider(frame, {"confidence": 0.99}, {"label": "a"}, (40.0, 5.0), policy=policy, **where)
        for _ in range(60)
    ]
    assert kept[:29] == [None] * 29  # too few frames to judge drift yet
    assert kept.count("drifting") == 5 and len(cap.pending()) == 5  # then drifting, up to the daily cap
    assert cap.drift_psi(reference) > 0.25
    normal = Capturer(tmp_path / "normal", "cam-2", seed=0)
    for i in range(60):  # frames as bright as the reference's: no drift, nothing kept
        assert normal.consider(frame, {"confidence": 0.99}, {}, (120.0 + i % 20, 5.0), policy=policy, **where) is None
    assert not cap.consider(frame, {"confidence": 0.1}, {}, (40.0, 5.0), policy=None, **where)  # no policy: never
