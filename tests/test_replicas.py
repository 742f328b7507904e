"""Two registry replicas on one PostgreSQL database and one S3 object store (issue 27, part 2).

Publish on one replica, download from the other; a staged rollout judged by the replicas' background
evaluators, exactly one of which holds the evaluator lease at a time; the lease holder killed with SIGKILL
mid-rollout, the other taking over; a telemetry load with one replica killed mid-load, nothing lost and
nothing counted twice. The object store is a real S3 server over HTTP (moto's server mode, or
``$FACTORY_TEST_S3_ENDPOINT``); the replicas sit behind one address (round-robin, skipping a dead one).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import DBS, build_cpu_release, db_url
from tests.registry_server import RoundRobin, S3Server, Server, make_settings, post_batches

needs_postgres = pytest.mark.skipif(not os.environ.get("FACTORY_TEST_POSTGRES_URL"), reason="needs PostgreSQL")


@pytest.mark.parametrize("kind", DBS)
def test_the_evaluator_lease_has_one_holder_and_passes_on_when_it_expires(tmp_path, kind):
    from factory.registry import db
    from factory.registry.lease import Lease

    engine = db.engine_for(db_url(kind, tmp_path))
    a, b = Lease(engine, "evaluator", 10, holder="a"), Lease(engine, "evaluator", 10, holder="b")
    assert a.acquire(now=100.0) and not b.acquire(now=100.0)
    assert a.acquire(now=105.0)  # renewed until 115
    assert not b.acquire(now=114.0) and b.acquire(now=115.5)  # expired: taken over
    assert not a.acquire(now=116.0) and a.current()["holder"] == "b"
    b.release()
    assert a.acquire(now=117.0)
    # many replicas asking at the same instant for a lease nobody holds yet: exactly one gets it
    contenders = [Lease(engine, "race", 10, holder=f"r{i}") for i in range(8)]
    got, start = [], threading.Barrier(len(contenders))

    def ask(lease):
        start.wait()
        if lease.acquire(now=200.0):
            got.append(lease.holder)

    threads = [threading.Thread(target=ask, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and contenders[0].current()["holder"] == got[0]
    engine.dispose()


@needs_postgres
def test_two_concurrent_transitions_of_one_rollout_move_it_once(tmp_path, monkeypatch):
    """An admin's advance on one replica and the evaluator's on another read the same stage: one wins."""
    from factory.registry import db
    from factory.registry import rollouts as ro

    engine = db.engine_for(db_url("postgresql", tmp_path))
    plan = ro.check_plan({"name": "r", "release": {"name": "m", "version": "1.0.0"}, "stages": [{"percent": 10},
                          {"percent": 50}, {"percent": 100}]})  # fmt: skip
    ts = db.now()
    with engine.begin() as conn:
        conn.execute(db.rollouts.insert().values(name="r", model="m", plan=db.dumps(plan), status="active", stage=0,
                                                 stage_started_at=ts, releases="{}", previous="{}", created_at=ts,
                                                 updated_at=ts))  # fmt: skip
    real_get, raced = ro.get, []

    def get_then_race(conn, name):
        row = real_get(conn, name)
        if not raced:  # the other replica advances between this one's read and its write
            raced.append(True)
            with engine.begin() as other:
                ro.transition(other, name, "advance", "admin", "by hand")
        return row

    monkeypatch.setattr(ro, "get", get_then_race)
    with pytest.raises(ro.RolloutConflict, match="changed meanwhile"):
        with engine.begin() as conn:
            ro.transition(conn, "r", "advance", "monitor", "healthy")
    monkeypatch.setattr(ro, "get", real_get)
    with engine.connect() as conn:
        assert ro.get(conn, "r")["stage"] == 1  # advanced once, not twice
        advances = [a for a in db.audit_entries(conn, "r") if a["action"] == "rollout.advance"]
    assert [a["actor"] for a in advances] == ["admin"]
    engine.dispose()


@pytest.fixture(scope="module")
def releases(tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    """A cpu bundle 1.0.0 and its re-release 1.1.0."""
    from factory.bundle.signing import load_private_key
    from factory.pipeline.fleet_demo import _retag as retag

    tmp = tmp_path_factory.mktemp("replicas")
    base = build_cpu_release(trained, synth_ds, keypair, loose_targets, tmp / "b")
    retag(base, tmp / "re" / "cpu", "1.1.0", load_private_key(keypair[0]), "test re-release")
    return {"1.0.0": base, "1.1.0": tmp / "re" / "cpu"}


def _holder_pid(engine) -> int | None:
    from factory.registry import db

    with engine.connect() as conn:
        r = conn.execute(sa.select(db.leases).where(db.leases.c.name == "rollout-evaluator")).first()
    return None if r is None or r.until < time.time() else int(r.holder.split(":")[1])


def _stored(engine) -> tuple[int, int]:
    from factory.registry import db

    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.telemetry.c.idempotency_key)).all()
    return len(rows), len({k for (k,) in rows})


@needs_postgres
def test_two_replicas_on_postgresql_and_s3(tmp_path, releases, keypair, trained, synth_ds):
    from factory.bundle.signing import generate_keys
    from factory.device.client import RegistryClient
    from factory.device.simulate import Fleet, Knobs, load_images
    from factory.device.telemetry import Window
    from factory.registry import db
    from factory.registry.auth import create_token

    s3 = S3Server(tmp_path)
    bucket = s3.bucket("factory-replicas")
    fleet_key, _ = generate_keys(tmp_path / "fleet")
    settings = make_settings(tmp_path, db_url("postgresql", tmp_path), [str(keypair[1])], str(fleet_key))
    settings["storage"] = f"{bucket}/{uuid.uuid4().hex}"
    settings["telemetry"] |= {"window_seconds": 2, "evaluate_seconds": 0.5}
    replicas = [Server(settings, env=s3.env, log_dir=tmp_path), Server(settings, env=s3.env, log_dir=tmp_path)]
    engine = db.engine_for(settings["database"])
    try:
        for r in replicas:
            r.start()
        with engine.begin() as conn:
            admin = create_token(conn, "admin", "admin")
        lb = RoundRobin([r.url for r in replicas])
        client = RegistryClient(http=httpx.Client(base_url="http://registry", transport=lb, timeout=30), token=admin)
        published = {v: client.publish(f) for v, f in releases.items()}
        assert not (tmp_path / "blobs").exists()  # the blobs are in the bucket, not on a replica's disk
        for r in replicas:  # each replica lists both and serves both archives from the bucket
            with RegistryClient(r.url, admin) as direct:
                assert {x["version"] for x in direct.releases()} == {"1.0.0", "1.1.0"}
                for v, m in published.items():
                    path = f"/v1/releases/{m['name']}/{v}/cpu"
                    info, dest = direct.call("GET", path), tmp_path / f"{r.port}-{v}.tar.gz"
                    direct.download(path + "/bundle", dest, m["sha256"], info["size"])  # sha256 checked
                    assert info["sha256"] == m["sha256"] and dest.stat().st_size == info["size"]
        model = trained.card["name"]
        client.create_rollout({"name": "base", "release": {"name": model, "version": "1.0.0"},
                               "stages": [{"percent": 100}]})  # fmt: skip
        client.act("base", "advance", "first release")
        stages = [{"percent": 20, "min_devices_reporting": 3}, {"percent": 60, "min_devices_reporting": 3},
                  {"percent": 100}]  # fmt: skip
        health = {"min_inferences": 40, "windows_to_halt": 2, "max_psi": 50.0, "max_js": 1.0}
        client.create_rollout({"name": "good", "release": {"name": model, "version": "1.1.0"}, "stages": stages,
                               "health": health})  # fmt: skip
        fleet = Fleet(client, model=model, devices=30, targets=["cpu"], knobs=Knobs(retry_share=0.2,
                      latency_model_ms=0.5), images=load_images(str(synth_ds)), cache=tmp_path / "dev",
                      window_seconds=2)  # fmt: skip
        killed = None
        for _ in range(12):
            fleet.simulate(1, inferences=30, evaluate=False)  # only the replicas' own evaluators judge
            time.sleep(1.5)
            state = client.rollout("good")
            if state["status"] == "completed":
                break
            if state["stage"] >= 1 and killed is None:  # kill -9 whichever replica evaluates now
                pid = _holder_pid(engine)
                killed = next(r for r in replicas if r.proc.pid == pid)
                killed.kill9()
        assert killed is not None and client.rollout("good")["status"] == "completed"
        survivor = next(r for r in replicas if r is not killed)
        assert _holder_pid(engine) == survivor.proc.pid  # the lease passed on
        moves = [a for a in client.audit("good") if a["action"] in ("rollout.advance", "rollout.complete")]
        assert [a["detail"]["from_stage"] for a in moves] == [0, 1, 2]  # each stage judged once, never twice
        assert all(a["actor"] == "monitor" for a in moves)
        assert lb.refused > 0  # the dead replica was skipped
        keys, unique = _stored(engine)
        assert keys == unique  # fleet retries were answered "duplicate", never stored twice

        # a telemetry load with one replica killed mid-load: every summary stored once
        killed.start()
        before = keys
        release = {"name": model, "version": "1.1.0", "target": "cpu"}
        summaries, start = [], time.time() - 3600
        for k in range(400):
            w = Window(fleet.devices[k % 30].device_id, "cpu", [], release, len(trained.labels),
                       start=start + k // 30 * 60, seconds=60)  # fmt: skip
            for j in range(5):
                w.add(0.5 + j * 0.1, {"confidence": 0.9, "cls": (k + j) % len(trained.labels)}, (120.0, 40.0))
            summaries.append(w.summary())
        result = {}
        lb2 = RoundRobin([r.url for r in replicas])
        load = threading.Thread(
            target=lambda: result.update(
                post_batches("http://registry", admin, [summaries[i : i + 10] for i in range(0, 400, 10)], lb2)
            )
        )
        load.start()
        while _stored(engine)[0] < before + 130:
            time.sleep(0.02)
        replicas[0].kill9()
        load.join(timeout=120)
        keys, unique = _stored(engine)
        assert keys == unique == before + 400, result  # none lost, none counted twice
        assert result["accepted"] + result["duplicate"] >= 400 and result["lost"] <= 1, result
    finally:
        for r in replicas:
            r.stop()
        engine.dispose()
        s3.stop()


def test_mlflow_artifacts_and_the_dvc_remote_on_the_same_s3_store(tmp_path, monkeypatch):
    import subprocess
    import sys

    import boto3
    import mlflow

    from factory.train.tracking import setup_experiment

    s3 = S3Server(tmp_path)
    bucket = s3.bucket("factory-lineage")
    for k, v in (s3.env | {"MLFLOW_S3_ENDPOINT_URL": s3.url}).items():
        monkeypatch.setenv(k, v)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        monkeypatch.setenv("FACTORY_MLFLOW_ARTIFACTS", f"{bucket}/mlflow")
        exp = setup_experiment("s3-artifacts")
        assert mlflow.get_experiment(exp).artifact_location == f"{bucket}/mlflow"
        card = tmp_path / "model_card.json"
        card.write_text('{"name": "on-s3"}')
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifact(str(card))
        got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model_card.json",
                                                  dst_path=str(tmp_path / "back"))  # fmt: skip
        assert open(got).read() == '{"name": "on-s3"}'

        repo = tmp_path / "repo"
        repo.mkdir()

        def dvc(*args):
            r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            return r.stdout

        dvc("init", "--no-scm", "-q")
        dvc("remote", "add", "-d", "store", f"{bucket}/dvc")
        dvc("remote", "modify", "store", "endpointurl", s3.url)
        (repo / "data").mkdir()
        (repo / "data" / "frames.bin").write_bytes(b"\x01\x02" * 5000)
        dvc("add", "data")
        dvc("push", "-q")
        (repo / "data" / "frames.bin").unlink()
        subprocess.run(["rm", "-rf", str(repo / ".dvc" / "cache")], check=True)
        dvc("pull", "-q")
        assert (repo / "data" / "frames.bin").read_bytes() == b"\x01\x02" * 5000
        keys = [
            o["Key"]
            for o in boto3.client("s3", endpoint_url=s3.url).list_objects_v2(Bucket="factory-lineage")["Contents"]
        ]
        assert any(k.startswith("mlflow/") for k in keys) and any(k.startswith("dvc/") for k in keys)
    finally:
        s3.stop()
