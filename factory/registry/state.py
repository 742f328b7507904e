"""The fleet state (what :func:`factory.device.assign.assign` reads), built from the database and signed.

A static rollout manifest is the fleet state signed with the fleet key:
``{"payload": {...state...}, "signature": {"algorithm", "key_id", "signature"}}``. A device verifies
it with its own trusted fleet key and refuses one that is unsigned, signed by another key, or older
(a lower ``sequence``) than the manifest it already accepted: no rollback attacks through stale
copies on a CDN. The verification side lives with the devices (:mod:`factory.device.fleetstate`).
"""

from __future__ import annotations

import json
import threading
import time

import sqlalchemy as sa

from .._io import canonical_json
from ..device.assign import ACTIVE
from ..device.fleetstate import MANIFEST_SCHEMA, STATE_SCHEMA
from . import db
from .rollouts import salt_for

__all__ = ["build_state", "StateCache", "sign_state"]


def _release_entry(r, public_url: str) -> dict:
    return {
        "name": r.name,
        "version": r.version,
        "target": r.target,
        "sha256": r.sha256,
        "size": int(r.size),
        "url": f"{public_url.rstrip('/')}/v1/releases/{r.name}/{r.version}/{r.target}/bundle",
    }


def build_state(conn, public_url: str) -> dict:
    """The fleet state from the database: active rollouts, stable releases and the releases they need."""
    rollouts = []
    needed: set[str] = set()
    for r in conn.execute(
        sa.select(db.rollouts).where(db.rollouts.c.status.in_(ACTIVE)).order_by(db.rollouts.c.id)
    ).all():
        plan, rel, prev = json.loads(r.plan), json.loads(r.releases), json.loads(r.previous)
        rollouts.append(
            {
                "name": r.name,
                "model": r.model,
                "status": r.status,
                "stage": r.stage,
                "stage_started_at": r.stage_started_at,
                "stages": plan["stages"],
                "cohort": plan["cohort"],
                "capture": plan.get("capture"),
                "salt": salt_for(r.name),
                "releases": rel,
                "previous": prev,
            }
        )
        needed |= set(rel.values()) | set(prev.values())
    stable = {f"{r.model}/{r.target}": r.release_key for r in conn.execute(sa.select(db.stable)).all()}
    needed |= set(stable.values())
    releases = {}
    if needed:
        for r in conn.execute(sa.select(db.releases)).all():
            key = f"{r.name}/{r.version}/{r.target}"
            if key in needed:
                releases[key] = _release_entry(r, public_url)
    return {
        "schema": STATE_SCHEMA,
        "sequence": db.state_version(conn),
        "issued_at": db.now(),
        "releases": releases,
        "stable": stable,
        "rollouts": rollouts,
    }


class StateCache:
    """A replica's cached fleet state, refreshed when the database's state version moves.

    Assignment requests never touch the database more than once per ``ttl`` seconds, and a replica
    sees another replica's change within ``ttl``.
    """

    def __init__(self, engine, public_url: str, ttl: float = 1.0):
        self.engine, self.public_url, self.ttl = engine, public_url, ttl
        self._state: dict | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()  # endpoints run in a thread pool: one refresh at a time

    def get(self) -> dict:
        state = self._state
        if state is not None and time.monotonic() - self._checked <= self.ttl:
            return state
        with self._lock:
            state = self._state
            if state is None or time.monotonic() - self._checked > self.ttl:
                with self.engine.connect() as conn:
                    version = db.state_version(conn)
                    if state is None or version != state["sequence"]:
                        state = build_state(conn, self.public_url)
                self._state, self._checked = state, time.monotonic()
            return state

    def invalidate(self) -> None:
        """Force a refresh on the next read (readers holding the old state keep a consistent one)."""
        self._checked = float("-inf")


def sign_state(state: dict, private_key) -> dict:
    """The static rollout manifest: the fleet state and an Ed25519 signature over its canonical JSON."""
    import base64

    from ..bundle.signing import key_id

    payload = canonical_json(state)
    return {
        "schema": MANIFEST_SCHEMA,
        "payload": state,
        "signature": {
            "algorithm": "ed25519",
            "key_id": key_id(private_key.public_key()),
            "signature": base64.b64encode(private_key.sign(payload)).decode(),
        },
    }
