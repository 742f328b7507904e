"""Telemetry ingestion: validate, attribute to a rollout, de-duplicate by idempotency key, store.

Rejections are typed and name the reason (a 4xx for a single summary, a per-item status in a
batch); nothing of a rejected summary is stored.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from ..device.assign import ACTIVE, bucket, in_cohort
from ..device.telemetry import validate_summary
from ..errors import InputError
from . import db
from .rollouts import NotFound, RolloutConflict, salt_for

__all__ = ["register_device", "Ingestor", "Duplicate", "UnknownDevice", "NotAssigned"]


class Duplicate(RolloutConflict):
    """This idempotency key was stored before (a retried upload): HTTP 409, nothing stored twice."""


class UnknownDevice(NotFound):
    """The device never registered: HTTP 404."""


class NotAssigned(RolloutConflict):
    """The summary is for a release the device was never assigned: HTTP 409."""


def register_device(conn, device_id: str, target: str, tags: list[str]) -> dict:
    """Insert or update a device's target and tags."""
    row = {"device_id": device_id, "target": target, "tags": db.dumps(sorted(tags)), "last_seen": db.now()}
    db.lock_fleet(conn)  # two registrations of one new id at once must not both insert it
    if conn.execute(sa.select(db.devices.c.device_id).where(db.devices.c.device_id == device_id)).first():
        conn.execute(db.devices.update().where(db.devices.c.device_id == device_id).values(**row))
    else:
        conn.execute(db.devices.insert().values(**row))
    return {"device_id": device_id, "target": target, "tags": sorted(tags)}


class Ingestor:
    def __init__(self, engine, max_bytes: int, max_rate: float = 100.0):
        self.engine, self.max_bytes, self.max_rate = engine, max_bytes, max_rate
        self._rollouts: list[dict] = []
        self._stable: set[str] = set()
        self._version = -1
        self._devices: dict[str, tuple[str, list[str]]] = {}

    def _refresh(self, conn) -> None:
        version = db.state_version(conn)
        if version == self._version:
            return
        self._rollouts = []
        for r in conn.execute(sa.select(db.rollouts)).all():
            plan = json.loads(r.plan)
            self._rollouts.append(
                {
                    "name": r.name,
                    "model": r.model,
                    "status": r.status,
                    "stage": r.stage,
                    "salt": salt_for(r.name),
                    "cohort": plan["cohort"],
                    "stages": plan["stages"],
                    "releases": json.loads(r.releases),
                    "previous": json.loads(r.previous),
                }
            )
        self._stable = {r.release_key for r in conn.execute(sa.select(db.stable.c.release_key)).all()}
        self._version = version

    def _device(self, conn, device_id: str) -> tuple[str, list[str]]:
        d = self._devices.get(device_id)
        if d is None:
            row = conn.execute(
                sa.select(db.devices.c.target, db.devices.c.tags).where(db.devices.c.device_id == device_id)
            ).first()
            if row is None:
                raise UnknownDevice(f"unknown device {device_id!r}", hint="a device registers first: POST /v1/devices")
            d = (row.target, json.loads(row.tags))
            self._devices[device_id] = d
        return d

    def _prefetch(self, conn, summaries: list) -> None:
        """Load every device of a batch that is not cached yet in one query (not one per summary)."""
        ids = {s.get("device_id") for s in summaries if isinstance(s, dict) and isinstance(s.get("device_id"), str)}
        missing = [d for d in ids if d not in self._devices]
        for i in range(0, len(missing), 500):
            rows = conn.execute(
                sa.select(db.devices.c.device_id, db.devices.c.target, db.devices.c.tags).where(
                    db.devices.c.device_id.in_(missing[i : i + 500])
                )
            ).all()
            for r in rows:
                self._devices[r.device_id] = (r.target, json.loads(r.tags))

    def forget_device(self, device_id: str) -> None:
        self._devices.pop(device_id, None)

    def _attribute(self, s: dict, target: str, tags: list[str]) -> tuple[str | None, int | None]:
        """(rollout, stage) the summary belongs to; NotAssigned if the device never had this release."""
        rel = s["release"]
        key = f"{rel['name']}/{rel['version']}/{rel['target']}"
        if rel["target"] != target:
            raise NotAssigned(f"device {s['device_id']} is a {target} device; it cannot run a {rel['target']} bundle")
        found_prev = None
        for r in self._rollouts:  # only rollouts still deciding: a rolled-back one never owns new telemetry
            if (
                r["status"] not in ACTIVE
                or r["model"] != rel["name"]
                or not in_cohort(r["cohort"], s["device_id"], target, tags)
            ):
                continue
            if r["releases"].get(target) == key:
                reached = r["stages"][r["stage"]]["percent"]
                if bucket(r["salt"], s["device_id"]) < reached:
                    return r["name"], r["stage"]
            if r["previous"].get(target) == key:
                found_prev = (r["name"], None)
        if found_prev:
            return found_prev
        if key in self._stable:
            return None, None
        raise NotAssigned(f"release {key} was never assigned to device {s['device_id']}; nothing stored")

    def check(self, conn, s: object, now: float) -> dict:
        text = db.dumps(s) if isinstance(s, dict) else None  # encoded once: size check and the stored row
        s = validate_summary(s, max_bytes=self.max_bytes, now=now, encoded=text, max_rate=self.max_rate)
        target, tags = self._device(conn, s["device_id"])
        rollout, stage = self._attribute(s, target, tags)
        rel = s["release"]
        return {
            "idempotency_key": s["idempotency_key"],
            "device_id": s["device_id"],
            "release_key": f"{rel['name']}/{rel['version']}/{rel['target']}",
            "rollout": rollout,
            "stage": stage,
            "window_start": float(s["window"]["start"]),
            "received_at": now,
            "summary": text,
        }

    def ingest(self, summaries: list, *, single: bool = False, speaker=None) -> list[dict]:
        """Store the valid, new summaries in one transaction; per item: accepted | duplicate | rejected.

        ``speaker``: the caller's identity; a summary about a device it does not speak for is rejected.
        Two uploads of one idempotency key at once: the one that commits second finds the key taken
        (a unique index) and is answered again from what is stored now, as the duplicate it is.
        """
        try:
            return self._ingest(summaries, single, speaker)
        except sa.exc.IntegrityError:
            return self._ingest(summaries, single, speaker)

    def _ingest(self, summaries: list, single: bool, speaker) -> list[dict]:
        now = time.time()
        results: list[dict] = []
        rows: list[tuple[int, dict]] = []
        with self.engine.begin() as conn:
            self._refresh(conn)
            self._prefetch(conn, summaries)
            for s in summaries:
                if speaker is not None and not speaker.speaks_for(s.get("device_id") if isinstance(s, dict) else None):
                    why = f"token {speaker.name!r} does not speak for that device"
                    results.append({"status": "rejected", "reason": why})
                    continue
                try:
                    row = self.check(conn, s, now)
                except InputError as exc:
                    if single:
                        raise
                    results.append({"status": "rejected", "reason": exc.message})
                    continue
                rows.append((len(results), row))
                results.append({"status": "accepted", "idempotency_key": row["idempotency_key"]})
            keys = [r["idempotency_key"] for _, r in rows]
            stored = (
                {
                    k
                    for (k,) in conn.execute(
                        sa.select(db.telemetry.c.idempotency_key).where(db.telemetry.c.idempotency_key.in_(keys))
                    ).all()
                }
                if keys
                else set()
            )
            fresh = []
            for i, row in rows:
                k = row["idempotency_key"]
                if k in stored:
                    if single:
                        raise Duplicate(f"summary {k} was already stored; a retried upload is counted once")
                    results[i] = {"status": "duplicate", "idempotency_key": k, "reason": "already stored"}
                    continue
                stored.add(k)
                fresh.append(row)
            if fresh:
                conn.execute(db.telemetry.insert(), fresh)
        return results
