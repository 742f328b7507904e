"""The registry service for real, on loopback: SQLite always, PostgreSQL when CI provides one."""

import json
import shutil
import socket
import time

import httpx
import numpy as np
import pytest

from factory.bundle.signing import generate_keys, load_private_key, load_public_key
from factory.device.assign import assign, bucket
from factory.device.fleetstate import verify_state
from factory.errors import SignatureError
from factory.registry.state import sign_state
from tests.conftest import DBS, build_args, db_url, invoke
from tests.registry_server import Server, make_settings


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    """Two versions of the tiny model's cpu and tflite bundles."""
    out = tmp_path_factory.mktemp("reg") / "bundles"
    for version in ("1.0.0", "1.1.0"):
        for target in ("cpu", "tflite"):
            r = invoke(
                *build_args(
                    trained.path,
                    target,
                    keypair,
                    loose_targets,
                    out,
                    "--data",
                    str(synth_ds),
                    "--no-track",
                    "--version",
                    version,
                )
            )
            assert r.exit_code == 0, r.output
    return out / trained.card["name"]


@pytest.fixture(scope="module", params=DBS)
def server(request, tmp_path_factory, keypair):
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    fleet_key, fleet_pub = generate_keys(tmp / "fleet")
    settings = make_settings(tmp, db_url(request.param, tmp), [str(keypair[1])], str(fleet_key))
    srv = Server(settings)
    settings["public_url"] = srv.url
    srv.start()
    from factory.registry import db
    from factory.registry.auth import create_token

    with db.engine_for(settings["database"]).begin() as conn:
        srv.admin = create_token(conn, "test-admin", "admin")
        srv.device = create_token(conn, "test-device", "device", "test-device-1")
        srv.viewer = create_token(conn, "test-viewer", "viewer")
    srv.fleet_pub = fleet_pub
    srv.tmp = tmp
    yield srv
    srv.stop()


def _h(token):
    return {"Authorization": f"Bearer {token}"}


def _publish(server, folder, token=None):
    from factory.bundle.archive import pack

    archive = pack(folder, server.tmp / f"{folder.parent.name}-{folder.name}.tar.gz")
    return httpx.post(
        server.url + "/v1/releases",
        content=archive.read_bytes(),
        headers=_h(token or server.admin) | {"Content-Type": "application/gzip"},
        timeout=60,
    )


def test_publish_inspect_download(server, bundles):
    r = _publish(server, bundles / "1.0.0" / "cpu")
    assert r.status_code == 201, r.text
    sha = r.json()["sha256"]
    again = _publish(server, bundles / "1.0.0" / "cpu")
    assert again.status_code == 201 and again.json()["created"] is False
    listed = httpx.get(server.url + "/v1/releases", headers=_h(server.device)).json()
    assert any(x["version"] == "1.0.0" and x["target"] == "cpu" for x in listed)
    url = server.url + f"/v1/releases/{bundles.name}/1.0.0/cpu/bundle"
    full = httpx.get(url, headers=_h(server.device))
    assert full.status_code == 200 and full.headers["etag"] == f'"{sha}"'
    assert httpx.get(url, headers=_h(server.device) | {"If-None-Match": f'"{sha}"'}).status_code == 304
    part = httpx.get(url, headers=_h(server.device) | {"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == full.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(full.content)}"
    assert httpx.get(url, headers=_h(server.device) | {"Range": "bytes=99999999-"}).status_code == 416


@pytest.mark.parametrize("tamper", ["unsigned", "flipped", "foreign"])
def test_bad_bundles_are_refused(server, bundles, tmp_path, tamper):
    from factory.bundle.manifest import Manifest

    copy = tmp_path / "cpu"
    shutil.copytree(bundles / "1.0.0" / "cpu", copy)
    if tamper == "unsigned":
        (copy / "manifest.sig").unlink()
    elif tamper == "flipped":
        data = bytearray((copy / "model.onnx").read_bytes())
        data[len(data) // 3] ^= 1
        (copy / "model.onnx").write_bytes(bytes(data))
    else:
        other, _ = generate_keys(tmp_path / "other")
        Manifest.read(copy).write_signed(copy, load_private_key(other))
    r = _publish(server, copy)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_device_tokens_cannot_publish_or_steer(server, bundles):
    assert _publish(server, bundles / "1.0.0" / "tflite", token=server.device).status_code == 403
    assert httpx.post(server.url + "/v1/releases", content=b"x").status_code == 401
    assert httpx.post(server.url + "/v1/rollouts/any/advance", headers=_h(server.device), json={}).status_code == 403
    assert httpx.post(server.url + "/v1/rollouts", headers=_h(server.device), json={}).status_code == 403


def _state(server) -> dict:
    return verify_state(
        httpx.get(server.url + "/v1/fleet-manifest", headers=_h(server.viewer)).json(),
        load_public_key(server.fleet_pub),
    )


def _act(server, name, action):
    r = httpx.post(
        server.url + f"/v1/rollouts/{name}/{action}", headers=_h(server.admin), json={"reason": f"test {action}"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_staged_rollout_assignment_and_rollback(server, bundles):
    for v in ("1.0.0", "1.1.0"):
        for t in ("cpu", "tflite"):
            assert _publish(server, bundles / v / t).status_code in (200, 201)
    model = bundles.name
    stages = [{"percent": p} for p in (1, 10, 50, 100)]
    base = {"release": {"name": model, "version": "1.0.0"}, "stages": [{"percent": 100}]}
    assert (
        httpx.post(server.url + "/v1/rollouts", headers=_h(server.admin), json=base | {"name": "first"}).status_code
        == 201
    )
    _act(server, "first", "advance")  # 100% -> completed: 1.0.0 becomes stable
    plan = {
        "name": "second",
        "release": {"name": model, "version": "1.1.0"},
        "cohort": {"targets": ["cpu"]},
        "stages": stages,
    }
    r = httpx.post(server.url + "/v1/rollouts", headers=_h(server.admin), json=plan)
    assert r.status_code == 201, r.text
    dup = httpx.post(server.url + "/v1/rollouts", headers=_h(server.admin), json=plan | {"name": "third"})
    assert dup.status_code == 409
    ids = [f"dev-{i:05d}" for i in range(10_000)]
    members_before: set[str] = set()
    for stage, pct in enumerate((1, 10, 50, 100)):
        state = _state(server)
        got = {d: assign(state, model, d, "cpu").release["version"] for d in ids}
        members = {d for d, v in got.items() if v == "1.1.0"}
        assert abs(len(members) / len(ids) * 100 - pct) <= 2, (stage, len(members))
        assert members_before <= members  # a device in the 1% stays in for 10%
        assert all(v == "1.0.0" for d, v in got.items() if d not in members)
        assert all(
            assign(state, model, d, "tflite").release["version"] == "1.0.0" for d in ids[:200]
        )  # outside the cohort
        members_before = members
        if stage < 3:
            _act(server, "second", "advance")
    _act(server, "second", "rollback")
    state = _state(server)
    assert all(assign(state, model, d, "cpu").release["version"] == "1.0.0" for d in ids)
    audit = httpx.get(server.url + "/v1/audit", params={"rollout": "second"}, headers=_h(server.admin)).json()
    assert [a["action"] for a in audit] == [
        "rollout.create",
        "rollout.advance",
        "rollout.advance",
        "rollout.advance",
        "rollout.rollback",
    ]
    assert all(a["actor"] == "test-admin" and a["ts"] for a in audit)


def test_static_manifest_matches_the_service_for_10000_devices(server, bundles):
    model = bundles.name
    plan = {
        "name": "static",
        "release": {"name": model, "version": "1.1.0"},
        "cohort": {"targets": ["tflite"]},
        "stages": [{"percent": 30}, {"percent": 100}],
    }
    r = httpx.post(server.url + "/v1/rollouts", headers=_h(server.admin), json=plan)
    assert r.status_code in (201, 409), r.text
    doc = httpx.get(server.url + "/v1/fleet-manifest", headers=_h(server.viewer)).json()
    state = verify_state(doc, load_public_key(server.fleet_pub))
    mismatches = 0
    with httpx.Client(base_url=server.url, headers=_h(server.viewer)) as client:
        for i in range(10_000):
            d = f"edge-{i}"
            served = client.get("/v1/assignment", params={"model": model, "device_id": d, "target": "tflite"}).json()
            mismatches += served["release"] != assign(state, model, d, "tflite").release
    assert mismatches == 0


def test_static_manifest_refuses_tampered_foreign_and_older(server, tmp_path):
    pub = load_public_key(server.fleet_pub)
    doc = httpx.get(server.url + "/v1/fleet-manifest", headers=_h(server.viewer)).json()
    seq = doc["payload"]["sequence"]
    assert verify_state(doc, pub, min_sequence=seq)["sequence"] == seq
    tampered = json.loads(json.dumps(doc))
    tampered["payload"]["stable"] = {}
    with pytest.raises(SignatureError, match="does not verify"):
        verify_state(tampered, pub)
    other, _ = generate_keys(tmp_path / "other")
    with pytest.raises(SignatureError, match="not the trusted fleet key"):
        verify_state(sign_state(doc["payload"], load_private_key(other)), pub)
    with pytest.raises(SignatureError, match="older"):
        verify_state(doc, pub, min_sequence=seq + 1)
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    with pytest.raises(SignatureError, match="unsigned"):
        verify_state(unsigned, pub)


def test_bucket_is_uniform_and_stable():
    values = np.array([bucket("salt", f"d{i}") for i in range(20_000)])
    assert abs((values < 10).mean() - 0.10) < 0.01
    assert bucket("salt", "d1") == bucket("salt", "d1") != bucket("other", "d1")


def test_killed_mid_upload_leaves_nothing_and_restarts(server, bundles, tmp_path):
    """kill -9 while a client is still sending the body: no release appears, the server restarts cleanly."""
    from factory.bundle.archive import pack

    archive = pack(bundles / "1.1.0" / "tflite", tmp_path / "big.tar.gz").read_bytes()
    settings = dict(server.settings)
    srv = Server(settings).start()
    from factory.registry import db
    from factory.registry.auth import create_token

    with db.engine_for(settings["database"]).begin() as conn:
        token = create_token(conn, "kill-test", "admin")
    before = httpx.get(srv.url + "/v1/releases", headers=_h(token)).json()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    head = (
        f"POST /v1/releases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/gzip\r\n"
        f"Content-Length: {len(archive) + 10_000_000}\r\n\r\n"
    ).encode()
    sock.sendall(head + archive + b"\0" * 1_000_000)  # more is promised than sent: the upload is mid-way
    time.sleep(1.0)
    srv.kill9()
    sock.close()
    srv2 = Server(settings, port=srv.port).start()
    try:
        after = httpx.get(srv2.url + "/v1/releases", headers=_h(token)).json()
        assert after == before
        assert httpx.get(srv2.url + "/healthz").json()["status"] == "ok"
        blobs_tmp = list((server.tmp / "blobs" / "tmp").iterdir())
        assert blobs_tmp == []
    finally:
        srv2.stop()
