"""The registry under faults of what it stands on (issue 27, part 2): a full blob store and a database that
is unreachable answer 503 with Retry-After, store nothing half-way, and work again once the fault is gone;
the device agent backs off for as long as it is told and loses no telemetry.

The faults are real: a tmpfs of a few hundred KB as the blob store (ENOSPC from the kernel), and a
PostgreSQL database that refuses connections (``ALLOW_CONNECTIONS false`` and its sessions terminated).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time

import httpx
import pytest

from tests.conftest import build_cpu_release, db_url
from tests.registry_server import Server, make_settings


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    out = tmp_path_factory.mktemp("faults") / "bundles"
    return build_cpu_release(trained, synth_ds, keypair, loose_targets, out)


def _admin(settings) -> str:
    from factory.registry import db
    from factory.registry.auth import create_token

    with db.engine_for(settings["database"]).begin() as conn:
        return create_token(conn, "admin", "admin")


def _mount_tmpfs(folder, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )


def test_a_full_blob_store_is_a_503_with_retry_after_and_publishing_works_once_space_is_back(tmp_path, bundle, keypair):
    from factory.device.client import RegistryClient, RegistryError

    blobs = tmp_path / "blobs"
    if not _mount_tmpfs(blobs, "768k"):
        pytest.skip("needs root and tmpfs mounts to fill a real filesystem")
    try:
        settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", [str(keypair[1])], str(keypair[0]))
        srv = Server(settings).start()
        try:
            client = RegistryClient(srv.url, _admin(settings))
            free = os.statvfs(blobs).f_bavail * os.statvfs(blobs).f_frsize
            (blobs / "filler").write_bytes(b"\0" * (free - 64 * 1024))  # 64 KB left: less than the bundle
            with pytest.raises(RegistryError) as refused:
                client.publish(bundle)
            assert refused.value.status == 503 and refused.value.retry_after == 30
            assert "blob store is full" in refused.value.message
            assert client.releases() == [] and list((blobs / "tmp").iterdir()) == []  # nothing half-stored
            (blobs / "filler").unlink()
            published = client.publish(bundle)
            assert published["version"] == "1.0.0" and len(client.releases()) == 1
            assert "Traceback" not in srv.log_tail()
        finally:
            srv.stop()
    finally:
        subprocess.run(["umount", str(blobs)], check=False)


def _connections(url: str, allow: bool) -> None:
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    eng = sa.create_engine(os.environ["FACTORY_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
        if not allow:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
            )
    eng.dispose()


@pytest.mark.skipif(not os.environ.get("FACTORY_TEST_POSTGRES_URL"), reason="needs PostgreSQL")
def test_a_lost_database_is_a_503_the_agent_backs_off_and_no_telemetry_is_lost(tmp_path, bundle, keypair, synth_ds):
    import sqlalchemy as sa

    from factory.bundle.signing import load_public_key
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient
    from factory.device.sources import frames
    from factory.registry import db
    from factory.registry.auth import create_token

    url = db_url("postgresql", tmp_path)
    settings = make_settings(tmp_path, url, [str(keypair[1])], str(keypair[0]))
    settings["telemetry"] = settings["telemetry"] | {"evaluate_seconds": 0.0}
    srv = Server(settings)
    settings["public_url"] = srv.url
    srv.start()
    engine = db.engine_for(url)
    try:
        with engine.begin() as conn:
            admin = create_token(conn, "admin", "admin")
            device = create_token(conn, "device:cam-1", "device", "cam-1")
        client = RegistryClient(srv.url, admin)
        m = client.publish(bundle)
        client.create_rollout(
            {"name": "base", "release": {"name": m["name"], "version": "1.0.0"}, "stages": [{"percent": 100}]}
        )
        client.act("base", "advance", "first release")
        agent = Agent(
            RegistryClient(srv.url, device),
            model=m["name"],
            device_id="cam-1",
            target="cpu",
            tags=[],
            state_dir=tmp_path / "state",
            bundle_key=load_public_key(keypair[1]),
            window_seconds=3600,
        )
        assert agent.sync().startswith("switched")
        for f in itertools.islice(frames(str(synth_ds / "images")), 6):
            agent.infer(f)
        agent.close_window()
        assert len(list((tmp_path / "state" / "outbox").glob("*.json"))) == 1
        engine.dispose()
        _connections(url, allow=False)
        try:
            r = httpx.get(srv.url + "/v1/releases", headers={"Authorization": f"Bearer {admin}"}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "5" and "database" in r.json()["detail"]
            now = time.time()
            out = agent.upload(now)
            assert out["sent"] == 0 and out["waiting"] == 1  # kept in the outbox
            assert agent.next_upload >= now + 5 and "503" in agent.last_error
            assert agent.upload(now + 1)["backoff"] is True  # it waits as long as it was told
        finally:
            _connections(url, allow=True)
        deadline = time.time() + 30
        while httpx.get(srv.url + "/v1/releases", headers={"Authorization": f"Bearer {admin}"}).status_code != 200:
            assert time.time() < deadline, "the registry did not recover"
            time.sleep(0.5)
        out = agent.upload(agent.next_upload + 0.1)
        assert out["sent"] == 1 and out["waiting"] == 0
        assert agent.upload(agent.next_upload + 0.2)["sent"] == 0  # nothing sent twice
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(db.telemetry)).scalar() == 1
        assert "Traceback" not in srv.log_tail(20000)
    finally:
        srv.stop()
        engine.dispose()


def test_killed_at_the_worst_moments_the_registry_restarts_consistent(tmp_path, bundle, keypair, trained):
    """SIGKILL with a bundle stored but its row not committed, a rollout transition written but not committed,
    and a capture image stored with its row uncommitted: after a restart nothing half-done is visible, the
    orphaned blobs are swept (a capture is personal data: it must not outlive its row), and each retry
    lands exactly once."""
    import base64

    import cv2
    import numpy as np
    import sqlalchemy as sa

    from factory.bundle.signing import load_private_key
    from factory.device.client import RegistryClient, Unreachable
    from factory.pipeline.fleet_demo import _retag as retag
    from factory.registry import db
    from factory.registry.auth import create_token
    from factory.registry.storage import BlobStore
    from factory.registry.sweep import sweep_orphans

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", [str(keypair[1])], str(keypair[0]))
    settings["telemetry"] = settings["telemetry"] | {"evaluate_seconds": 0.0}
    engine = db.engine_for(settings["database"])
    with engine.begin() as conn:
        admin = create_token(conn, "admin", "admin")
        cam = create_token(conn, "device:cam-1", "device", "cam-1")
    state = {"srv": None}

    def restart(fault: str | None = None) -> RegistryClient:
        if state["srv"]:
            state["srv"].stop()
        port = state["srv"].port if state["srv"] else None
        state["srv"] = Server(settings, port=port, env={"FACTORY_FAULT": fault} if fault else {}).start()
        settings["public_url"] = state["srv"].url
        return RegistryClient(state["srv"].url, admin)

    def died() -> bool:
        return state["srv"].proc.wait(timeout=10) == -9

    def count(table) -> int:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()

    newer = tmp_path / "1.1.0" / "cpu"
    retag(bundle, newer, "1.1.0", load_private_key(keypair[0]), "test re-release")
    model = trained.card["name"]
    later = time.time() + 7200  # the sweep leaves blobs younger than an hour (uploads in flight)
    try:
        client = restart("kill@publish-blob-stored")
        with pytest.raises(Unreachable):
            client.publish(bundle)
        assert died()
        client = restart()
        assert client.releases() == [] and "release.publish" not in [a["action"] for a in client.audit()]
        assert sweep_orphans(engine, BlobStore(settings["storage"]), now=later)["bundles"] == 1
        assert client.publish(bundle)["created"] and client.publish(newer)["created"]
        assert sweep_orphans(engine, BlobStore(settings["storage"]), now=later)["bundles"] == 0

        client.create_rollout(
            {"name": "base", "release": {"name": model, "version": "1.0.0"}, "stages": [{"percent": 100}]}
        )
        client = restart("kill@rollout-transition")
        with pytest.raises(Unreachable):
            client.act("base", "advance", "first release")
        assert died()
        client = restart()
        r = client.rollout("base")
        assert r["status"] == "active" and r["stage"] == 0 and count(db.stable) == 0  # nothing half-moved
        assert client.act("base", "advance", "first release")["status"] == "completed"
        assert [a["action"] for a in client.audit("base")].count("rollout.complete") == 1

        policy = {"when": {"random_rate": 1.0}, "max_per_device_per_day": 3, "max_bytes": 40_000, "retention_days": 1}
        client.create_rollout(
            {
                "name": "field",
                "release": {"name": model, "version": "1.1.0"},
                "stages": [{"percent": 100}],
                "cohort": {"devices": ["cam-1"]},
                "capture": policy,
            }  # fmt: skip
        )
        device = RegistryClient(state["srv"].url, cam)
        device.request("POST", "/v1/devices", json={"device_id": "cam-1", "target": "cpu", "tags": []}, ok=(201,))
        jpeg = cv2.imencode(".jpg", np.full((60, 80, 3), 90, np.uint8))[1].tobytes()
        body = {
            "idempotency_key": "cam-1:frame-1",
            "device_id": "cam-1",
            "rollout": "field",
            "release": {"name": model, "version": "1.1.0", "target": "cpu"},
            "reason": "random",
            "output": {"label": "x", "confidence": 0.5},
            "image": base64.b64encode(jpeg).decode(),
        }
        restart("kill@capture-row-written")
        with pytest.raises(Unreachable):
            RegistryClient(state["srv"].url, cam).call("POST", "/v1/captures", json=body)
        assert died()
        restart()
        device = RegistryClient(state["srv"].url, cam)
        assert count(db.captures) == 0
        assert sweep_orphans(engine, BlobStore(settings["storage"]), now=later)["captures"] == 1  # no stray image
        assert device.call("POST", "/v1/captures", json=body)["status"] == "accepted"
        assert device.call("POST", "/v1/captures", json=body)["status"] == "duplicate"
        assert count(db.captures) == 1
        assert sweep_orphans(engine, BlobStore(settings["storage"]), now=later)["captures"] == 0
        assert "Traceback" not in state["srv"].log_tail(20000)
    finally:
        state["srv"].stop()
        engine.dispose()
