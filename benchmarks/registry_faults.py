"""The registry under faults, measured: requests sent, accepted, lost and double-counted, and the time to recover.

    python benchmarks/registry_faults.py --bundle bundles/id-docs/0.1.0/cpu --key keys/signing.key \\
        [--postgres postgresql+psycopg://factory:factory@127.0.0.1:5432/factory]

1. kill -9 during telemetry ingestion: a gateway uploads 2,000 summaries of 200 registered devices in
   batches of 20, retrying a batch (same idempotency keys) on a lost connection or a 5xx; the registry
   process is killed with SIGKILL after a third of the batches and restarted 2 s later on the same port.
2. The database unreachable for 30 s (PostgreSQL, with --postgres): the same load while the database
   refuses connections (ALLOW_CONNECTIONS false, sessions terminated); the gateway waits Retry-After.
3. The blob store full during publish: the store on a tmpfs with 64 KB left; publish is retried every
   Retry-After until space is freed 10 s later.
4. SIGKILL at the worst moment (FACTORY_FAULT=kill@POINT) of a publish (blob stored, row not committed),
   a rollout transition (written, not committed) and a capture upload (image stored, row not committed);
   restarted and the request sent again: what was visible, what the orphan sweep removed, time to recover.
5. Two replicas on PostgreSQL and S3 (moto's server, real HTTP) behind round-robin, with --postgres: the
   replica holding the rollout evaluator's lease killed with SIGKILL a third of the way through the load
   of scenario 1 and not restarted; the other serves the rest and takes the lease over.

Each scenario ends by counting the rows: lost = summaries never stored, double = rows beyond the
unique summaries. Writes benchmarks/results/registry-faults.{json,md}. Needs root for the tmpfs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

DEVICES, SUMMARIES, BATCH = 200, 2000, 20


def _summaries(release: dict, n_classes: int) -> list[dict]:
    from factory.device.telemetry import Window

    out, start = [], time.time() - 3600
    for k in range(SUMMARIES):
        w = Window(f"dev-{k % DEVICES}", "cpu", [], release, n_classes, start=start + k // DEVICES * 60, seconds=60)
        for j in range(5):
            w.add(0.5 + j * 0.1, {"confidence": 0.93, "cls": (k + j) % n_classes}, (120.0, 40.0))
        out.append(w.summary())
    return out


class Gateway:
    """Uploads batches in order; a batch is resent until the registry answers 200 (idempotent)."""

    def __init__(self, url: str, token: str, batches: list[list[dict]], transport=None):
        self.url, self.token, self.batches, self.transport = url, token, batches, transport
        self.sent = self.accepted = self.duplicates = self.refused_503 = self.lost_connections = 0
        self.first_failure = self.recovered = None
        self.done = 0

    def run(self) -> None:
        import httpx

        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=30, transport=self.transport) as c:
            for batch in self.batches:
                while True:
                    self.sent += 1
                    try:
                        r = c.post("/v1/telemetry/batch", json={"summaries": batch})
                    except httpx.HTTPError:
                        self.lost_connections += 1
                        self.first_failure = self.first_failure or time.time()
                        time.sleep(0.2)
                        continue
                    if r.status_code == 503:
                        self.refused_503 += 1
                        self.first_failure = self.first_failure or time.time()
                        time.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    r.raise_for_status()
                    if self.first_failure and not self.recovered:
                        self.recovered = time.time()
                    res = r.json()["results"]
                    self.accepted += sum(x["status"] == "accepted" for x in res)
                    self.duplicates += sum(x["status"] == "duplicate" for x in res)
                    break
                self.done += 1


def _registry(tmp: Path, database: str, pub: Path, storage=None, env=None, evaluate_seconds: float = 0.0):
    from registry_server import Server, make_settings

    from factory.bundle.signing import generate_keys
    from factory.registry import db
    from factory.registry.auth import create_token

    fleet, _ = generate_keys(tmp / "fleet")
    settings = make_settings(tmp, database, [str(pub)], str(fleet))
    if storage:
        settings["storage"] = str(storage)
    settings["telemetry"]["evaluate_seconds"] = evaluate_seconds
    engine = db.engine_for(database)
    with engine.begin() as conn:
        admin = create_token(conn, "bench-admin", "admin")
        conn.execute(
            db.devices.insert(),
            [{"device_id": f"dev-{i}", "target": "cpu", "tags": "[]", "last_seen": db.now()} for i in range(DEVICES)],
        )
    srv = Server(settings, env=env, log_dir=tmp)
    settings["public_url"] = srv.url
    return srv.start(), settings, engine, admin


def _count(engine) -> int:
    import sqlalchemy as sa

    from factory.registry import db

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(db.telemetry)).scalar())


def _load(srv, admin, bundle: Path, fault, transport=None) -> dict:
    from factory.device.client import RegistryClient

    client = RegistryClient(srv.url, admin)
    m = client.publish(bundle)
    client.create_rollout(
        {"name": "base", "release": {"name": m["name"], "version": m["version"]}, "stages": [{"percent": 100}]}
    )
    client.act("base", "advance", "every device runs it")
    from factory.bundle.manifest import Manifest

    labels = Manifest.read(bundle).labels
    summaries = _summaries({"name": m["name"], "version": m["version"], "target": "cpu"}, len(labels))
    batches = [summaries[i : i + BATCH] for i in range(0, len(summaries), BATCH)]
    gw = Gateway(srv.url if transport is None else "http://replicas", admin, batches, transport)
    t = threading.Thread(target=gw.run)
    t.start()
    while gw.done < len(gw.batches) // 3:
        time.sleep(0.05)
    fault_at = time.time()
    fault()
    t.join()
    return {"gw": gw, "fault_at": fault_at, "unique": len(summaries)}


def _row(name: str, run: dict, stored: int, recovery_from: float) -> dict:
    gw = run["gw"]
    return {
        "fault": name,
        "requests_sent": gw.sent,
        "requests_refused_503": gw.refused_503,
        "requests_lost_connection": gw.lost_connections,
        "summaries": run["unique"],
        "accepted": gw.accepted,
        "duplicates_answered": gw.duplicates,
        "stored": stored,
        "lost": run["unique"] - min(stored, run["unique"]),
        "double_counted": max(0, stored - run["unique"]),
        "recovery_seconds": round(gw.recovered - recovery_from, 2) if gw.recovered else None,
    }


def kill9(tmp: Path, bundle: Path, pub: Path) -> dict:
    from registry_server import Server

    srv, settings, engine, admin = _registry(tmp, f"sqlite:///{tmp / 'r.db'}", pub)
    state = {}

    def fault():
        srv.kill9()
        state["killed"] = time.time()
        time.sleep(2.0)
        state["srv"] = Server(settings, port=srv.port).start()

    try:
        run = _load(srv, admin, bundle, fault)
        return _row(
            "registry killed with SIGKILL mid-ingestion, restarted after 2 s", run, _count(engine), state["killed"]
        )
    finally:
        state.get("srv", srv).stop()


def lost_database(tmp: Path, bundle: Path, pub: Path, postgres: str) -> dict:
    import sqlalchemy as sa

    name = f"faults_{int(time.time())}"
    admin_eng = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin_eng.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres.rsplit("/", 1)[0] + "/" + name
    srv, settings, engine, admin = _registry(tmp, url, pub)
    state = {}

    def allow(flag: bool):
        with admin_eng.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(flag).lower()}'))
            if not flag:
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=:n"), {"n": name}
                )

    def fault():
        engine.dispose()
        allow(False)
        time.sleep(30)
        allow(True)
        state["back"] = time.time()

    try:
        run = _load(srv, admin, bundle, fault)
        return _row("database refusing connections for 30 s (PostgreSQL)", run, _count(engine), state["back"])
    finally:
        srv.stop()
        engine.dispose()


def _new_database(postgres: str, prefix: str) -> str:
    import sqlalchemy as sa

    name = f"{prefix}_{int(time.time())}"
    eng = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return postgres.rsplit("/", 1)[0] + "/" + name


def _lease_pid(engine) -> int | None:
    import sqlalchemy as sa

    from factory.registry import db

    with engine.connect() as conn:
        r = conn.execute(sa.select(db.leases).where(db.leases.c.name == "rollout-evaluator")).first()
    return None if r is None or r.until < time.time() else int(r.holder.split(":")[1])


def replicas(tmp: Path, bundle: Path, pub: Path, postgres: str) -> list[dict]:
    """Two replicas on PostgreSQL and S3 (moto's server) behind round-robin; the one holding the evaluator
    lease killed with SIGKILL a third of the way through the load and not restarted."""
    from registry_server import RoundRobin, S3Server, Server

    s3 = S3Server(tmp)
    storage = f"{s3.bucket('factory-bench')}/{int(time.time())}"
    srv, settings, engine, admin = _registry(
        tmp, _new_database(postgres, "replicas"), pub, storage=storage, env=s3.env, evaluate_seconds=1.0
    )
    second = Server(settings, env=s3.env, log_dir=tmp).start()
    both = [srv, second]
    lb = RoundRobin([r.url for r in both])
    state = {}
    while _lease_pid(engine) is None:
        time.sleep(0.1)

    def fault():
        holder = next(r for r in both if r.proc.pid == _lease_pid(engine))
        survivor = next(r for r in both if r is not holder)
        holder.kill9()
        state["killed"] = time.time()
        while _lease_pid(engine) != survivor.proc.pid:
            time.sleep(0.05)
        state["takeover"] = time.time() - state["killed"]

    try:
        run = _load(srv, admin, bundle, fault, transport=lb)
        row = _row(
            "one of two replicas (PostgreSQL + S3) killed with SIGKILL mid-ingestion, not restarted",
            run,
            _count(engine),
            state["killed"],
        )
        row["recovery_seconds"] = 0.0 if not row["requests_lost_connection"] else row["recovery_seconds"]
        lease = {
            "fault": "the rollout evaluator's lease holder killed (evaluate_seconds 1, lease 3 s)",
            "requests_sent": "-",
            "recovery_seconds": round(state["takeover"], 2),
            "note": "time until the surviving replica held the lease",
        }
        return [row, lease]
    finally:
        for r in both:
            r.stop()
        engine.dispose()
        s3.stop()


def crash_points(tmp: Path, bundle: Path, key: Path) -> list[dict]:
    """SIGKILL at the worst moment of a publish, a rollout transition and a capture upload (FACTORY_FAULT),
    then a restart and the same request again: what is visible, what the sweep removes, the time to recover."""
    import base64

    import cv2
    import numpy as np
    import sqlalchemy as sa
    from registry_server import Server

    from factory.bundle.manifest import Manifest
    from factory.device.client import RegistryClient, Unreachable
    from factory.registry import db
    from factory.registry.auth import create_token
    from factory.registry.storage import BlobStore
    from factory.registry.sweep import sweep_orphans

    srv, settings, engine, admin = _registry(tmp, f"sqlite:///{tmp / 'c.db'}", key.with_suffix(".pub"))
    with engine.begin() as conn:
        cam = create_token(conn, "device:dev-0", "device", "dev-0")
    state = {"srv": srv}
    m = Manifest.read(bundle)

    def restart(fault=None):
        state["srv"].stop()
        state["srv"] = Server(settings, port=srv.port, env={"FACTORY_FAULT": fault} if fault else {}, log_dir=tmp)
        state["srv"].start()

    def count(table) -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar())

    def crash(fault, call, visible, again) -> dict:
        restart(fault)
        try:
            call()
            raise RuntimeError(f"{fault} did not crash the registry")
        except Unreachable:
            pass
        killed = time.time()
        assert state["srv"].proc.wait(timeout=10) == -9
        restart()
        seen = visible()
        swept = sweep_orphans(engine, BlobStore(settings["storage"]), now=time.time() + 7200)
        again()
        return {
            "fault": f"registry killed ({fault}), restarted, the request sent again",
            "requests_sent": 2,
            "accepted": 1,
            "lost": 0,
            "half_done_visible": seen,
            "orphans_swept": sum(swept.values()),
            "recovery_seconds": round(time.time() - killed, 2),
        }

    def admin_client():
        return RegistryClient(state["srv"].url, admin)

    rows = [
        crash(
            "kill@publish-blob-stored",
            lambda: admin_client().publish(bundle),
            lambda: len(admin_client().releases()),
            lambda: admin_client().publish(bundle),
        )
    ]
    admin_client().create_rollout(
        {"name": "base", "release": {"name": m.name, "version": m.version}, "stages": [{"percent": 100}]}
    )
    rows.append(
        crash(
            "kill@rollout-transition",
            lambda: admin_client().act("base", "advance", "first release"),
            lambda: int(admin_client().rollout("base")["status"] != "active") + count(db.stable),
            lambda: admin_client().act("base", "advance", "first release"),
        )
    )
    policy = {"when": {"random_rate": 1.0}, "max_per_device_per_day": 5, "max_bytes": 40_000, "retention_days": 1}
    from factory.bundle.signing import load_private_key
    from factory.pipeline.fleet_demo import _retag

    newer = tmp / "newer" / "cpu"
    _retag(bundle, newer, "9.0.0", load_private_key(key), "bench re-release")
    admin_client().publish(newer)
    admin_client().create_rollout(
        {
            "name": "field",
            "release": {"name": m.name, "version": "9.0.0"},
            "stages": [{"percent": 100}],
            "cohort": {"devices": ["dev-0"]},
            "capture": policy,
        }  # fmt: skip
    )
    jpeg = cv2.imencode(".jpg", np.full((60, 80, 3), 90, np.uint8))[1].tobytes()
    body = {
        "idempotency_key": "dev-0:frame-1",
        "device_id": "dev-0",
        "rollout": "field",
        "release": {"name": m.name, "version": "9.0.0", "target": "cpu"},
        "reason": "random",
        "output": {"label": "x", "confidence": 0.5},
        "image": base64.b64encode(jpeg).decode(),
    }
    rows.append(
        crash(
            "kill@capture-row-written",
            lambda: RegistryClient(state["srv"].url, cam).call("POST", "/v1/captures", json=body),
            lambda: count(db.captures),
            lambda: RegistryClient(state["srv"].url, cam).call("POST", "/v1/captures", json=body),
        )
    )
    state["srv"].stop()
    engine.dispose()
    return rows


def full_disk(tmp: Path, bundle: Path, pub: Path) -> dict:
    from factory.device.client import RegistryClient, RegistryError

    blobs = tmp / "blobs-tmpfs"
    blobs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(blobs)]).returncode:
        return {"fault": "blob store full during publish", "skipped": "needs root for a tmpfs"}
    try:
        srv, settings, engine, admin = _registry(tmp, f"sqlite:///{tmp / 'd.db'}", pub, storage=blobs)
        st = os.statvfs(blobs)
        (blobs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))
        client = RegistryClient(srv.url, admin)
        sent = refused = 0
        freed = None
        threading.Timer(10.0, lambda: (blobs / "filler").unlink()).start()
        start = time.time()
        while True:
            sent += 1
            try:
                client.publish(bundle)
                break
            except RegistryError as exc:
                if exc.status != 503:
                    raise
                refused += 1
                time.sleep(min(exc.retry_after or 1.0, 1.0))  # the benchmark polls faster than the 30 s it is told
            if not (blobs / "filler").exists() and freed is None:
                freed = time.time()
        done = time.time()
        srv.stop()
        return {
            "fault": "blob store full during publish (tmpfs, 64 KB left), freed after 10 s",
            "requests_sent": sent,
            "requests_refused_503": refused,
            "accepted": 1,
            "lost": 0,
            "half_written_blobs": len(list((blobs / "tmp").iterdir())),
            "recovery_seconds": round(done - (freed or start + 10.0), 2),
        }
    finally:
        subprocess.run(["umount", str(blobs)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="a signed cpu bundle folder to publish")
    ap.add_argument("--key", required=True, help="its signing key (the .pub beside it is trusted)")
    ap.add_argument("--postgres", default=os.environ.get("FACTORY_TEST_POSTGRES_URL"))
    a = ap.parse_args()
    bundle, pub = Path(a.bundle).resolve(), Path(a.key).with_suffix(".pub").resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, fn in (("kill9", lambda d: kill9(d, bundle, pub)), ("disk", lambda d: full_disk(d, bundle, pub))):
            (tmp / name).mkdir()
            print(f"scenario {name}", flush=True)
            rows.append(fn(tmp / name))
        (tmp / "points").mkdir()
        print("scenario crash points (publish, rollout transition, capture)", flush=True)
        rows += crash_points(tmp / "points", bundle, Path(a.key).resolve())
        if a.postgres:
            (tmp / "db").mkdir()
            print("scenario lost database (30 s)", flush=True)
            rows.append(lost_database(tmp / "db", bundle, pub, a.postgres))
            (tmp / "replicas").mkdir()
            print("scenario two replicas on PostgreSQL and S3, one killed", flush=True)
            rows += replicas(tmp / "replicas", bundle, pub, a.postgres)
    result = {"host": host_info(), "rows": rows}
    out = ROOT / "benchmarks" / "results" / "registry-faults"
    write_json(out.with_suffix(".json"), result)
    lines = [
        "# The registry under faults",
        "",
        f"Host: {result['host']['cpu']} ({result['host']['cores']} cores). "
        "`python benchmarks/registry_faults.py --bundle ... --key ... [--postgres URL]`.",
        "",
        "| fault | requests sent | refused 503 | lost connection | accepted | duplicates | stored | lost | "
        "double-counted | half-done visible | orphans swept | recovery s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fault']} | {r.get('requests_sent', '-')} | {r.get('requests_refused_503', '-')} | "
            f"{r.get('requests_lost_connection', '-')} | {r.get('accepted', '-')} | "
            f"{r.get('duplicates_answered', '-')} | {r.get('stored', '-')} | "
            f"{r.get('lost', '-')} | {r.get('double_counted', '-')} | {r.get('half_done_visible', '-')} | "
            f"{r.get('orphans_swept', '-')} | {r.get('recovery_seconds', '-')} |"
        )
    lines += [
        "",
        "Recovery: from the kill (the restart came 2 s later), from connections allowed again (database) or "
        "from the space freed (disk) to the first request the registry accepted. Duplicates: summaries of a "
        "resent batch that the registry had already stored, answered as duplicates and stored once. Crash "
        "points: recovery from the kill to the retried request's answer (restart included); half-done visible "
        "counts a release listed, a rollout moved or a capture row left by the killed request; orphans swept "
        "are the blobs it left, removed by the sweep the evaluator runs. Replicas: the load's recovery is 0 "
        "when the round-robin sent nothing to the dead replica mid-request; the lease row's recovery is the "
        "time until the surviving replica held the evaluator lease.",
    ]
    atomic_write(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
