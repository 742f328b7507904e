"""The fleet side under attack: each test is one finding of the security review, tried for real.

Registry servers run on loopback (uvicorn in a subprocess); the device agent runs in-process; a
"lying registry" is a real RegistryClient whose network is an httpx MockTransport, or a client
object that hands out hostile assignments. Numbers in the test names refer to the review's list.
"""

import gzip
import io
import json
import os
import shutil
import tarfile
import time

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from factory.bundle.manifest import Manifest, copy_resigned
from factory.bundle.signing import generate_keys, load_private_key, load_public_key
from factory.errors import BundleError, SignatureError
from tests.conftest import DBS, build_cpu_release, db_url, invoke
from tests.registry_server import Server, make_settings

WINDOW = 2
HEALTH = {"min_inferences": 50, "windows_to_halt": 2, "max_psi": 1000.0, "max_js": 1.0, "max_latency_p95_ratio": 100.0}


def _h(token):
    return {"Authorization": f"Bearer {token}"}


def _rebuild(src, dest, key, version, model_bytes=None):
    """A copy of a bundle under another version; with ``model_bytes`` its model file is replaced (and signed)."""
    if model_bytes is None:
        return copy_resigned(src, dest, key, lambda m: setattr(m, "version", version))
    shutil.copytree(src, dest)
    m = Manifest.read(dest)
    (dest / m.main_file).write_bytes(model_bytes)
    from factory.bundle.manifest import file_entries

    m.files = file_entries(dest, list(m.files))
    m.version = version
    m.write_signed(dest, key)
    return m


@pytest.fixture(scope="module", params=DBS)
def sec(request, tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    """A registry with 1.0.0 stable, 1.1.0 (healthy copy) and 1.2.0 (correctly signed, model file garbage)."""
    from factory.device.client import RegistryClient
    from factory.registry import db
    from factory.registry.auth import create_token

    tmp = tmp_path_factory.mktemp("sec")
    base = build_cpu_release(trained, synth_ds, keypair, loose_targets, tmp / "b")
    key = load_private_key(keypair[0])
    folders = {"1.0.0": base, "1.1.0": tmp / "r" / "1.1.0" / "cpu", "1.2.0": tmp / "r" / "1.2.0" / "cpu"}
    _rebuild(base, folders["1.1.0"], key, "1.1.0")
    _rebuild(base, folders["1.2.0"], key, "1.2.0", model_bytes=b"\x08\x01garbage, not a protobuf" * 50)
    fleet_key, fleet_pub = generate_keys(tmp / "fleet")
    settings = make_settings(tmp, db_url(request.param, tmp), [str(keypair[1])], str(fleet_key))
    settings["telemetry"] |= {"window_seconds": WINDOW, "evaluate_seconds": 0.0, "max_inferences_per_second": 100.0}
    srv = Server(settings)
    settings["public_url"] = srv.url
    srv.start()
    engine = db.engine_for(settings["database"])
    with engine.begin() as conn:
        tokens = {role: create_token(conn, f"sec-{role}", role) for role in ("admin", "viewer", "enroll")}
    admin = RegistryClient(srv.url, tokens["admin"])
    for f in folders.values():
        admin.publish(f)
    model = trained.card["name"]
    admin.create_rollout(
        {"name": "sec-base", "release": {"name": model, "version": "1.0.0"}, "stages": [{"percent": 100}]}
    )
    admin.act("sec-base", "advance", "first release")
    yield {
        "server": srv,
        "url": srv.url,
        "tokens": tokens,
        "admin": admin,
        "model": model,
        "folders": folders,
        "engine": engine,
        "settings": settings,
        "key": keypair,
        "fleet_pub": fleet_pub,
        "tmp": tmp,
    }
    admin.close()
    srv.stop()


def _enroll(sec, device_id, tags=()):
    r = httpx.post(
        sec["url"] + "/v1/devices/enroll",
        headers=_h(sec["tokens"]["enroll"]),
        json={"device_id": device_id, "target": "cpu", "tags": list(tags)},
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def _summary(sec, device_id, version="1.0.0", count=60, errors=0, start=None):
    from factory.device.telemetry import Window

    w = Window(
        device_id,
        "cpu",
        [],
        {"name": sec["model"], "version": version, "target": "cpu"},
        8,
        seconds=WINDOW,
        start=start if start is not None else time.time() // WINDOW * WINDOW,
    )
    for i in range(count):
        if i < errors:
            w.add(0.0, None, (120.0, 40.0))
            continue
        w.add(1.0, {"confidence": 0.86, "cls": i % 8}, (120.0, 40.0))
    return w.summary()


def _stored(sec) -> int:
    from factory.registry import db

    with sec["engine"].connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.telemetry)).scalar_one()


# --------------------------------------------------------------------------------------------- 2: identity
def test_02_a_device_token_speaks_only_for_its_own_device(sec):
    token = _enroll(sec, "honest-1")
    _enroll(sec, "victim-1")
    before = _stored(sec)
    forged = _summary(sec, "victim-1")
    r = httpx.post(sec["url"] + "/v1/telemetry", headers=_h(token), json=forged)
    assert r.status_code == 403 and "speaks only for device 'honest-1'" in r.json()["detail"]
    batch = httpx.post(
        sec["url"] + "/v1/telemetry/batch", headers=_h(token), json={"summaries": [forged, _summary(sec, "honest-1")]}
    )
    assert [x["status"] for x in batch.json()["results"]] == ["rejected", "accepted"]
    assert _stored(sec) == before + 1  # only its own summary
    assert (
        httpx.post(
            sec["url"] + "/v1/devices", headers=_h(token), json={"device_id": "victim-1", "target": "cpu"}
        ).status_code
        == 403
    )
    params = {"model": sec["model"], "device_id": "victim-1", "target": "cpu"}
    assert httpx.get(sec["url"] + "/v1/assignment", headers=_h(token), params=params).status_code == 403
    own = httpx.get(sec["url"] + "/v1/assignment", headers=_h(token), params=params | {"device_id": "honest-1"})
    assert own.status_code == 200 and own.json()["release"]["version"] == "1.0.0"


def test_02_enrolment_issues_one_credential_per_device(sec):
    enroll = sec["tokens"]["enroll"]
    token = _enroll(sec, "new-cam-1", ["region-eu"])
    again = httpx.post(
        sec["url"] + "/v1/devices/enroll", headers=_h(enroll), json={"device_id": "new-cam-1", "target": "cpu"}
    )
    assert again.status_code == 409 and "already enrolled" in again.json()["detail"]  # no takeover of an enrolled id
    assert httpx.get(sec["url"] + "/v1/releases", headers=_h(enroll)).status_code == 403  # it only enrols
    rotated = httpx.post(
        sec["url"] + "/v1/devices/enroll",
        headers=_h(sec["tokens"]["admin"]),
        json={"device_id": "new-cam-1", "target": "cpu"},
    )
    assert rotated.status_code == 201 and rotated.json()["token"] != token
    time.sleep(0.3)  # the token cache reloads within its ttl
    assert httpx.get(sec["url"] + "/v1/releases", headers=_h(token)).status_code == 401  # the old credential is gone
    assert httpx.get(sec["url"] + "/v1/releases", headers=_h(rotated.json()["token"])).status_code == 200


def _rollout_with_telemetry(sec, name, honest_errors, forged, windows=2, devices=20):
    """A 100% rollout of 1.1.0 that cannot complete in the test's time (an hour's minimum duration: it can
    only be rolled back); ``devices`` honest devices report 60 inferences with ``honest_errors`` each, plus
    ``forged`` (a summary from one compromised device, through its own token) per window."""
    admin = sec["admin"]
    stages = [{"percent": 100, "min_duration_minutes": 60}]
    admin.create_rollout(
        {"name": name, "release": {"name": sec["model"], "version": "1.1.0"}, "stages": stages, "health": HEALTH}
    )
    bad_token = _enroll(sec, f"{name}-bad")
    honest = [f"{name}-ok-{i}" for i in range(devices)]
    for d in honest:
        admin.request("POST", "/v1/devices", json={"device_id": d, "target": "cpu", "tags": []})
    start = time.time() // WINDOW * WINDOW
    statuses = []
    for w in range(windows):
        ws = start + w * WINDOW
        batch = [_summary(sec, d, "1.1.0", errors=honest_errors, start=ws) for d in honest]
        admin.request("POST", "/v1/telemetry/batch", json={"summaries": batch})
        r = httpx.post(sec["url"] + "/v1/telemetry", headers=_h(bad_token), json=forged(f"{name}-bad", ws))
        statuses.append(r.status_code)
    admin.request("POST", "/v1/evaluate")
    return admin.rollout(name), statuses


def test_02_one_forged_device_cannot_roll_a_healthy_release_back(sec):
    r, statuses = _rollout_with_telemetry(
        sec, "forged-errors", 0, lambda d, ws: _summary(sec, d, "1.1.0", count=120, errors=60, start=ws)
    )
    assert statuses == [201, 201] and r["status"] == "active", r["status"]
    sec["admin"].act("forged-errors", "rollback", "test done")
    report = httpx.get(sec["url"] + "/v1/health", headers=_h(sec["tokens"]["viewer"])).json()
    windows = next(x for x in report["rollouts"] if x["name"] == "forged-errors")["targets"]["cpu"]["windows"]
    # healthy in every window: errors concentrated on one device are discounted by the dispersion between devices
    # (the device is the unit), and whatever is left cannot rest on one device (leave-one-out)
    assert windows and all((w["verdict"] or {}).get("healthy") is not False for w in windows), windows


def test_02_one_inflated_device_cannot_hide_real_errors(sec):
    # a count the rate cap refuses outright, then the largest the cap allows: weighted like two typical devices
    _, refused = _rollout_with_telemetry(
        sec, "inflated-a", 24, lambda d, ws: _summary(sec, d, "1.1.0", count=10**4, start=ws), windows=1
    )
    assert refused == [422]
    sec["admin"].act("inflated-a", "rollback", "test done")
    r, statuses = _rollout_with_telemetry(
        sec, "inflated-b", 24, lambda d, ws: _summary(sec, d, "1.1.0", count=200, start=ws)
    )
    # 40% errors on every honest device; and the telemetry is the new rollout's, not the rolled-back one's of the
    # same release (it used to be attributed to the first rollout of that release, whatever its status)
    assert statuses == [201, 201] and r["status"] == "rolled_back"


# --------------------------------------------------------------------------------------------- 1: paths
class _LyingClient:
    """A registry that assigns whatever it likes (all other calls succeed and do nothing)."""

    def __init__(self, release):
        self.release, self.downloads = release, []

    def request(self, *a, **k):
        return None

    def assignment(self, *a, **k):
        return {"release": self.release}, '"x"'

    def download(self, url, dest, sha256, size=None):
        self.downloads.append(dest)
        dest.write_bytes(b"ssh-rsa AAAA attacker")


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "../../outside"),
        ("version", "1.0.0/../../../../outside"),
        ("target", "cpu/../../x"),
        ("sha256", "../" * 30 + "authorized_keys"),
        ("name", "other-model"),
        ("size", -1),
    ],
)
def test_01_the_agent_never_writes_where_the_registry_says(sec, tmp_path, field, value):
    from factory.device.agent import Agent

    sha = "a" * 64
    release = {"name": sec["model"], "version": "9.9.9", "target": "cpu", "sha256": sha, "size": 10, "url": "/x"} | {
        field: value
    }
    state = tmp_path / "device" / "state"
    agent = Agent(
        _LyingClient(release),
        model=sec["model"],
        device_id="d1",
        target="cpu",
        tags=[],
        state_dir=state,
        bundle_key=load_public_key(sec["key"][1]),
        window_seconds=WINDOW,
    )
    status = agent.sync()
    assert status.startswith("kept None") and agent.runner is None
    written = [p for p in (tmp_path / "device").rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(state.resolve()) for p in written), written
    assert not list(tmp_path.glob("*outside*")) and not (tmp_path / "authorized_keys").exists()


# --------------------------------------------------------------------------------------------- 3: never crash
def _agent(sec, tmp_path, device_id, client=None, **kw):
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient

    client = client or RegistryClient(sec["url"], _enroll(sec, device_id))
    return Agent(
        client,
        model=sec["model"],
        device_id=device_id,
        target="cpu",
        tags=[],
        state_dir=tmp_path / device_id,
        bundle_key=load_public_key(sec["key"][1]),
        window_seconds=WINDOW,
        **kw,
    )


def test_03_a_signed_bundle_whose_model_is_garbage_keeps_the_old_model_and_backs_off(sec, tmp_path):
    agent = _agent(sec, tmp_path, "garbage-1")
    assert agent.sync().startswith("switched None")  # 1.0.0, the stable release
    sec["admin"].create_rollout(
        {"name": "garbage", "release": {"name": sec["model"], "version": "1.2.0"}, "stages": [{"percent": 100}]}
    )
    try:
        first = agent.sync()
        assert first.startswith(f"kept {sec['model']}/1.0.0/cpu") and agent.runner is not None
        failed = json.loads((tmp_path / "garbage-1" / "failed.json").read_text())
        assert [v["failures"] for v in failed.values()] == [1]
        second = agent.sync()  # straight away: not retried in a tight loop
        assert "next try in" in second and json.loads((tmp_path / "garbage-1" / "failed.json").read_text()) == failed
        label, conf = agent.infer(np.full((72, 96, 3), 128, np.uint8))
        assert 0 < conf <= 1
        agent.close_window()
        outbox = [json.loads(p.read_text()) for p in (tmp_path / "garbage-1" / "outbox").glob("*.json")]
        assert outbox and outbox[0]["sync_errors"] >= 1  # counted in telemetry
        again = _agent(sec, tmp_path, "garbage-1", client=agent.client)  # a restart does not crash either
        assert again.release_key.endswith("1.0.0/cpu") and "next try in" in again.sync()
    finally:
        sec["admin"].act("garbage", "rollback", "test done")


def test_03_html_for_an_assignment_and_a_full_disk_keep_the_old_model(sec, tmp_path):
    from factory.device.client import RegistryClient

    agent = _agent(sec, tmp_path, "html-1")
    assert agent.sync().startswith("switched None")
    html = httpx.Client(
        base_url="http://reg",
        transport=httpx.MockTransport(
            lambda req: httpx.Response(200, text="<html>captive portal</html>", headers={"content-type": "text/html"})
        ),
    )
    agent.client = RegistryClient(token="x", http=html)
    status = agent.sync()
    assert status.startswith(f"kept {sec['model']}/1.0.0/cpu") and "not a JSON object" in status

    class FullDisk(_LyingClient):
        def download(self, url, dest, sha256, size=None):
            raise OSError(28, "No space left on device")

    rel = {"name": sec["model"], "version": "1.1.0", "target": "cpu", "sha256": "b" * 64, "size": 100, "url": "/x"}
    agent.client = FullDisk(rel)
    status = agent.sync()
    assert "No space left on device" in status and agent.release_key.endswith("1.0.0/cpu")


def test_16_a_corrupted_active_bundle_heals_from_its_verified_archive(sec, tmp_path):
    agent = _agent(sec, tmp_path, "heal-1")
    assert agent.sync().startswith("switched None")
    folder = next((tmp_path / "heal-1" / "releases").iterdir())
    model = folder / agent.manifest.main_file
    model.write_bytes(b"corrupted on disk")
    restarted = _agent(sec, tmp_path, "heal-1", client=agent.client)
    assert restarted.release_key == agent.release_key and restarted.runner is not None
    assert model.read_bytes() != b"corrupted on disk"


# --------------------------------------------------------------------------------------------- 10: static manifest
def test_10_the_agent_runs_from_the_signed_static_manifest(sec, tmp_path):
    from factory.device.client import RegistryClient
    from factory.device.fleetstate import verify_state

    pub = load_public_key(sec["fleet_pub"])
    agent = _agent(sec, tmp_path, "static-1", fleet_key=pub)
    assert agent.sync().startswith("switched None") and agent.release_key.endswith("1.0.0/cpu")
    seq = json.loads((tmp_path / "static-1" / "fleet.json").read_text())["sequence"]
    doc = sec["admin"].fleet_manifest()

    def serve(body):
        return RegistryClient(
            token="x",
            http=httpx.Client(
                base_url="http://cdn", transport=httpx.MockTransport(lambda req: httpx.Response(200, json=body))
            ),
        )

    for forged, why in [
        ({k: v for k, v in doc.items() if k != "signature"}, "unsigned"),
        (doc | {"signature": doc["signature"] | {"signature": 12345}}, "unsigned"),
        (json.loads(json.dumps(doc).replace('"1.0.0"', '"1.1.0"')), "does not verify"),
    ]:
        agent.client = serve(forged)
        assert agent.sync().startswith(f"kept {sec['model']}/1.0.0/cpu") and why in agent.last_error
    older = json.loads(json.dumps(doc))
    with pytest.raises(SignatureError, match="older"):
        verify_state(older, pub, min_sequence=seq + 1)
    with pytest.raises(SignatureError):
        verify_state(doc | {"signature": {"key_id": doc["signature"]["key_id"], "signature": 7}}, pub)  # no TypeError


def test_10_fleet_simulate_via_manifest_needs_the_fleet_key(sec, synth_ds):
    r = invoke(
        "fleet",
        "simulate",
        "--registry",
        sec["url"],
        "--token",
        sec["tokens"]["admin"],
        "--images",
        str(synth_ds),
        "--via",
        "manifest",
        "--windows",
        "1",
        "--devices",
        "2",
        "--targets",
        "cpu",
    )
    assert r.exit_code == 2 and "--fleet-key" in r.output


# --------------------------------------------------------------------------------------------- 4, 5: bounded input
def test_04_bodies_are_limited_while_they_are_read(sec):
    import psutil

    proc = psutil.Process(sec["server"].proc.pid)
    rss = proc.memory_info().rss

    def chunks(total):
        block = b" " * (1 << 20)
        for _ in range(total >> 20):
            yield block

    for path in ("/v1/telemetry", "/v1/devices", "/v1/rollouts", "/v1/telemetry/batch"):
        r = httpx.post(
            sec["url"] + path,
            headers=_h(sec["tokens"]["admin"]) | {"Content-Type": "application/json"},
            content=chunks(64 << 20),
            timeout=60,
        )
        assert r.status_code == 413, (path, r.status_code, r.text[:200])
    assert proc.memory_info().rss - rss < 40 << 20  # never buffered
    import socket

    with socket.create_connection(("127.0.0.1", sec["server"].port)) as s:  # a 1 GiB Content-Length: refused at once
        s.sendall(
            f"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 30}\r\n"
            f"Authorization: Bearer {sec['tokens']['admin']}\r\n\r\n{{}}".encode()
        )
        assert s.recv(4096).split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")


def test_05_type_confusion_is_a_4xx(sec):
    admin = _h(sec["tokens"]["admin"])
    for body in (
        {"device_id": ["x"]},
        {"device_id": {"a": 1}},
        ["not", "an", "object"],
        {"schema": 7, "count": "many"},
    ):
        r = httpx.post(sec["url"] + "/v1/telemetry", headers=admin, json=body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    r = httpx.post(
        sec["url"] + "/v1/telemetry/batch", headers=admin, json={"summaries": [{"device_id": {"x": 1}}, 5, None]}
    )
    assert r.status_code == 200 and {x["status"] for x in r.json()["results"]} == {"rejected"}


# --------------------------------------------------------------------------------------------- 6, 7, 17: plans
@pytest.mark.parametrize(
    "change",
    [
        {"cohort": {"tags": [{"a": 1}]}},
        {"stages": [{"percent": 100, "min_duration_minutes": "soon"}]},
        {"stages": [{"percent": 100, "min_devices_reporting": True}]},
        {"health": {"max_error_rate": 7}},
        {"health": {"windows_to_halt": 0}},
        {"name": "stuck one/x"},
        {"name": "<img src=x onerror=alert(1)>"},
        {"release": {"name": "m", "version": "latest"}},
        {"cohort": {"exclude": [f"dev-{i}" for i in range(10_001)]}},  # 17: bounded lists
        {"stages": [{"percent": p} for p in range(1, 101)]},
    ],
)
def test_06_07_17_plans_are_validated_fully_at_creation(sec, change):
    plan = {"name": "validated", "release": {"name": sec["model"], "version": "1.1.0"}, "stages": [{"percent": 100}]}
    r = httpx.post(sec["url"] + "/v1/rollouts", headers=_h(sec["tokens"]["admin"]), json=plan | change)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_06_a_broken_stored_plan_never_stops_the_evaluation_of_the_others(sec):
    from factory.registry import db

    ts = db.now()
    with sec["engine"].begin() as conn:  # a plan an older version accepted: the evaluator must skip it, not die
        conn.execute(
            db.rollouts.insert().values(
                name="legacy-broken",
                model="other-model",
                status="active",
                stage=0,
                stage_started_at=ts,
                created_at=ts,
                updated_at=ts,
                plan=json.dumps(
                    {"stages": [{"percent": 100, "min_duration_minutes": "soon"}], "health": {}, "cohort": {}}
                ),
                releases=json.dumps({"cpu": "other-model/1.0.0/cpu"}),
                previous="{}",
            )
        )
    try:
        r, _ = _rollout_with_telemetry(sec, "beside-broken", 24, lambda d, ws: _summary(sec, d, "1.1.0", start=ws))
        assert r["status"] == "rolled_back"
        decisions = sec["admin"].request("POST", "/v1/evaluate").json()["decisions"]
        assert any(d["rollout"] == "legacy-broken" and d["action"] == "error" for d in decisions)
        report = httpx.get(sec["url"] + "/v1/health", headers=_h(sec["tokens"]["viewer"]))
        assert report.status_code == 200 and any(x["name"] == "legacy-broken" for x in report.json()["rollouts"])
    finally:
        with sec["engine"].begin() as conn:
            conn.execute(db.rollouts.delete().where(db.rollouts.c.name == "legacy-broken"))


def test_07_the_status_page_shows_hostile_names_as_text(sec, tmp_path):
    import subprocess

    from factory.registry import db

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (CI installs Debian's chromium)")
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    ts = db.now()
    with sec["engine"].begin() as conn:  # stored before names were validated
        conn.execute(
            db.rollouts.insert().values(
                name=hostile,
                model=sec["model"],
                status="rolled_back",
                stage=0,
                stage_started_at=ts,
                created_at=ts,
                updated_at=ts,
                plan=json.dumps({"stages": [{"percent": 100}], "health": HEALTH, "cohort": {}}),
                releases=json.dumps({"cpu": f"{sec['model']}/1.1.0/cpu"}),
                previous="{}",
            )
        )
    try:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'p'}",
            "--virtual-time-budget=5000",
        ]
        url = sec["url"] + "/status#token=" + sec["tokens"]["viewer"]
        time.sleep(1.1)  # the health report is shared for a second
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        from html.parser import HTMLParser

        class Parsed(HTMLParser):
            tags, text, title = set(), [], None

            def handle_starttag(self, tag, attrs):
                self.tags.add(tag)

            def handle_data(self, data):
                self.text.append(data)
                if self.lasttag == "title" and self.title is None:
                    self.title = data

        page = Parsed()
        page.feed(dom)
        assert "rolled_back" in dom and any(
            '<img src=x onerror="document.title' in t for t in page.text
        )  # shown as text
        assert "img" not in page.tags and page.title.startswith("Fleet status")  # never markup, never run
        # the release's history page lists the hostile rollout, as text; a snapshot embeds it inertly
        url = sec["url"] + f"/status/releases/{sec['model']}/1.1.0/cpu#token=" + sec["tokens"]["viewer"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        page = Parsed()
        page.tags, page.text, page.title = set(), [], None
        page.feed(dom)
        assert any('<img src=x onerror="document.title' in t for t in page.text), dom[:3000]
        assert "img" not in page.tags and page.title.startswith("Fleet history")
        from factory.registry.history import write_snapshots

        for f in write_snapshots(sec["engine"], 60, tmp_path / "snap"):
            html = f.read_text()
            assert "<img" not in html.split('id="factory-data"')[1].split("</script>")[0]  # embedded data is inert
    finally:
        with sec["engine"].begin() as conn:
            conn.execute(db.rollouts.delete().where(db.rollouts.c.name == hostile))


# --------------------------------------------------------------------------------------------- 8: health endpoints
def test_08_health_and_metrics_need_a_reader_token(sec):
    for path in ("/v1/health", "/metrics"):
        assert httpx.get(sec["url"] + path).status_code == 401
        assert (
            httpx.get(
                sec["url"] + path, headers=_h(_enroll(sec, f"reader-{path.strip('/').replace('/', '-')}"))
            ).status_code
            == 403
        )
        assert httpx.get(sec["url"] + path, headers=_h(sec["tokens"]["viewer"])).status_code == 200
    assert httpx.get(sec["url"] + "/healthz").status_code == 200  # liveness stays open and says nothing about the fleet


def test_08_judged_windows_are_read_once_per_content(sec):
    from factory.registry.health import series_for

    key = f"{sec['model']}/1.0.0/cpu"
    admin = sec["admin"]
    admin.request("POST", "/v1/devices", json={"device_id": "cache-1", "target": "cpu", "tags": []})
    admin.request("POST", "/v1/telemetry", json=_summary(sec, "cache-1"))
    with sec["engine"].connect() as conn:
        first = series_for(conn, key, WINDOW, since=time.time() - 60 * WINDOW)
        second = series_for(conn, key, WINDOW, since=time.time() - 60 * WINDOW)
        assert first and all(second[w][0] is first[w][0] for w in first)  # the same objects: nothing re-read
    admin.request("POST", "/v1/telemetry", json=_summary(sec, "cache-1", start=max(first)))  # new data for one window
    with sec["engine"].connect() as conn:
        third = series_for(conn, key, WINDOW, since=time.time() - 60 * WINDOW)
    assert (
        third[max(first)][0] is not first[max(first)][0]
        and third[max(first)][0]["count"] > first[max(first)][0]["count"]
    )


# --------------------------------------------------------------------------------------------- 9: unpack
def test_09_unpack_never_wipes_a_folder(sec, tmp_path, monkeypatch):
    archive = sec["folders"]["1.0.0"].parent / "cpu.tar.gz"
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    r = invoke("bundle", "unpack", str(archive), "--out", str(keep))
    assert r.exit_code == 2 and "not empty" in r.stderr and (keep / "notes.txt").read_text() == "precious"
    monkeypatch.chdir(keep)
    r = invoke("bundle", "unpack", str(archive), "--out", ".", "--force")
    assert r.exit_code == 2 and "current folder" in r.stderr and sorted(p.name for p in keep.iterdir()) == ["notes.txt"]
    monkeypatch.chdir(tmp_path)
    r = invoke("bundle", "unpack", str(archive), "--out", str(keep), "--force", "--pubkey", str(sec["key"][1]))
    assert (
        r.exit_code == 0
        and "verified" in r.stdout
        and (keep / "manifest.json").is_file()
        and not (keep / "notes.txt").exists()
    )


# ---------------------------------------------------------------------------------- 11-15: archives and downloads
def _tar(members: list[tuple[str, bytes]], gz=True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


def _publish_bytes(sec, data: bytes):
    return httpx.post(
        sec["url"] + "/v1/releases",
        content=data,
        headers=_h(sec["tokens"]["admin"]) | {"Content-Type": "application/gzip"},
        timeout=60,
    )


def _blobs(sec) -> int:
    return len(list((sec["tmp"] / "blobs" / "bundles").rglob("*.tar.gz")))


def test_11_a_refused_publish_leaves_no_blob(sec, tmp_path):
    before = _blobs(sec)
    other = tmp_path / "other"
    _rebuild(sec["folders"]["1.1.0"], other, load_private_key(sec["key"][0]), "1.1.0", model_bytes=b"different content")
    from factory.bundle.archive import pack

    r = _publish_bytes(sec, pack(other, tmp_path / "o.tar.gz").read_bytes())
    assert r.status_code == 409 and _blobs(sec) == before


def test_12_13_14_hostile_archives_get_a_clear_refusal(sec, tmp_path):
    from factory.bundle.archive import MAX_MEMBERS, unpack

    good = (sec["folders"]["1.0.0"].parent / "cpu.tar.gz").read_bytes()
    members = {}
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    manifest = json.loads(members["manifest.json"])
    unsigned_no_validation = {k: v for k, v in manifest.items() if k != "validation"}
    signed_no_validation = tmp_path / "nv"
    shutil.copytree(sec["folders"]["1.0.0"], signed_no_validation)
    (signed_no_validation / "manifest.json").write_text(json.dumps(unsigned_no_validation))
    from factory.bundle.signing import sign

    (signed_no_validation / "manifest.sig").write_bytes(
        sign((signed_no_validation / "manifest.json").read_bytes(), load_private_key(sec["key"][0]))
    )
    from factory.bundle.archive import pack

    cases = {
        "truncated gzip": (good[: len(good) // 2], "truncated or corrupt"),
        "member named '.'": (_tar([(".", b"x")]), "no file name"),
        "truncated inner tar": (gzip.compress(_tar(list(members.items()), gz=False)[:1500]), "truncated or corrupt"),
        "duplicate names": (_tar([("model.onnx", b"\0" * 10)] + list(members.items())), "appears twice"),
        "too many members": (
            _tar([(f"f{i}", b"") for i in range(MAX_MEMBERS + 1)]),
            f"more than {MAX_MEMBERS} members",
        ),
        "signed manifest without validation": (
            pack(signed_no_validation, tmp_path / "nv.tar.gz").read_bytes(),
            "validation",
        ),
    }
    for name, (data, why) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.tar.gz"
        path.write_bytes(data)
        r = invoke("bundle", "verify", str(path), "--pubkey", str(sec["key"][1]))
        assert r.exit_code == 2 and why in r.stderr and "Aborted" not in r.output, (name, r.output)
        answer = _publish_bytes(sec, data)
        assert answer.status_code == 422 and why in answer.json()["detail"], (
            name,
            answer.status_code,
            answer.text[:300],
        )
    # 14: the signature is checked before anything large is written (a 256 MB zero file in a 250 kB archive)
    bomb = tmp_path / "bomb.tar.gz"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            if name != "model.onnx":
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("model.onnx")
        info.size = 256 << 20
        tar.addfile(info, io.BytesIO(bytes(256 << 20)))
    bomb.write_bytes(raw.getvalue())
    with pytest.raises(BundleError, match="differ from the signed manifest"):
        unpack(bomb, tmp_path / "out", trusted_keys=[load_public_key(sec["key"][1])])
    assert not (tmp_path / "out").exists() and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_15_range_and_etag_headers(sec):
    url = sec["url"] + f"/v1/releases/{sec['model']}/1.0.0/cpu/bundle"
    admin = _h(sec["tokens"]["admin"])
    head = httpx.get(url, headers=admin)
    etag = head.headers["ETag"]
    assert httpx.get(url, headers=admin | {"Range": "bytes=0-" + "9" * 4400}).status_code == 416
    assert httpx.get(url, headers=admin | {"If-None-Match": "*"}).status_code == 304
    assert httpx.get(url, headers=admin | {"If-None-Match": f"W/{etag}"}).status_code == 304
    assert httpx.get(url, headers=admin | {"If-None-Match": '"other", ' + etag}).status_code == 304
    assert httpx.get(url, headers=admin | {"Range": "bytes=0-9"}).status_code == 206


# --------------------------------------------------------------------------------------------- fuzz
def test_fuzz_plans_and_summaries_never_get_a_5xx(sec):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True),
        st.text(max_size=30),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
    good_plan = {
        "name": "fuzz",
        "release": {"name": sec["model"], "version": "1.1.0"},
        "stages": [{"percent": 100}],
        "cohort": {"tags": [], "targets": ["cpu"]},
        "health": {"max_psi": 0.2},
    }
    good_summary = _summary(sec, "fuzz-dev")
    sec["admin"].request("POST", "/v1/devices", json={"device_id": "fuzz-dev", "target": "cpu", "tags": []})
    failures = []
    headers = _h(sec["tokens"]["admin"]) | {"Content-Type": "application/json"}
    client = httpx.Client(base_url=sec["url"], headers=headers, timeout=30)

    def mutate(doc, path, value):
        out = json.loads(json.dumps(doc))
        node = out
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return out

    plan_paths = [
        ("name",),
        ("release",),
        ("release", "version"),
        ("stages",),
        ("stages", 0),
        ("cohort",),
        ("cohort", "tags"),
        ("cohort", "devices"),
        ("health",),
        ("health", "max_psi"),
        ("health", "windows_to_halt"),
        ("extra",),
    ]
    summary_paths = [
        ("device_id",),
        ("count",),
        ("errors",),
        ("window",),
        ("window", "start"),
        ("window", "seconds"),
        ("release",),
        ("release", "version"),
        ("latency_ms",),
        ("predicted_class",),
        ("tags",),
        ("sync_errors",),
        ("schema",),
    ]

    @given(path=st.sampled_from(plan_paths), value=junk)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def plans(path, value):
        r = client.post("/v1/rollouts", content=json.dumps(mutate(good_plan, path, value)))  # NaN included
        if r.status_code >= 500:
            failures.append(("plan", path, value, r.status_code, r.text[:200]))
        elif r.status_code == 201:
            client.post("/v1/rollouts/fuzz/rollback", json={})
            with sec["engine"].begin() as conn:
                from factory.registry import db

                conn.execute(db.rollouts.delete().where(db.rollouts.c.name == "fuzz"))

    @given(path=st.sampled_from(summary_paths), value=junk)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def summaries(path, value):
        body = mutate(good_summary, path, value) | {"idempotency_key": f"fuzz-{os.urandom(6).hex()}"}
        for r in (
            client.post("/v1/telemetry", content=json.dumps(body)),  # NaN and Infinity included
            client.post("/v1/telemetry/batch", content=json.dumps({"summaries": [body]})),
        ):
            if r.status_code >= 500:
                failures.append(("summary", path, value, r.status_code, r.text[:200]))

    plans()
    summaries()
    client.close()
    assert not failures, failures[:5]
