"""Bearer tokens and the identities behind them.

Roles:

    admin    publish bundles, manage rollouts, read everything; may act for any device (a trusted relay)
    viewer   read-only: health, metrics, rollouts, releases, audit (dashboards, Prometheus, the status page)
    enroll   a fleet enrolment token: it can only enrol a new device, which returns that device's own token;
             with a budget (``max_devices``) it enrols that many devices and no more
    device   bound to one device id: it pulls bundles and speaks for that device only (register, assignment,
             telemetry); a report about any other device is refused with 403

Only the sha256 of a token is stored; the token itself is shown once, when created. Revocation
reaches every replica within the cache's ttl.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from ..errors import InputError
from . import db

__all__ = [
    "ROLES",
    "DEVICE_ID",
    "Identity",
    "hash_token",
    "create_token",
    "revoke_token",
    "enroll_device",
    "EnrolmentSpent",
    "TokenCache",
]

ROLES = ("admin", "viewer", "enroll", "device")
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's role and name, and for a device token the device it speaks for."""

    role: str
    name: str
    device_id: str | None = None
    token_hash: str | None = None  # which token (an enrolment token's budget is counted per token)

    def speaks_for(self, device_id: object) -> bool:
        """May this caller act as ``device_id``? Admins may (a relay); a device token only as itself."""
        return self.role == "admin" or (self.role == "device" and device_id == self.device_id)


def hash_token(token: str) -> str:
    """What the database stores of a token: its sha256."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn, name: str, role: str, device_id: str | None = None, max_devices: int | None = None) -> str:
    """Create a token with a role (a device token names its device; an enrolment token may have a budget of
    ``max_devices``); returns it, the only time it is visible."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    if max_devices is not None and (role != "enroll" or not 1 <= max_devices <= 1_000_000):
        raise InputError("--max-devices (1 to 1,000,000) is a budget of an enrolment token (--role enroll)")
    if (role == "device") != (device_id is not None):
        raise InputError("a device token is bound to exactly one --device-id; other roles take none")
    if device_id is not None and not re.fullmatch(DEVICE_ID, device_id):
        raise InputError(f"device id {device_id!r} must be 1-200 characters of [A-Za-z0-9._:-]")
    token = f"fct_{role[0]}_{secrets.token_urlsafe(32)}"
    conn.execute(
        db.tokens.insert().values(
            name=name,
            role=role,
            token_hash=hash_token(token),
            created_at=db.now(),
            revoked=False,
            device_id=device_id,
            max_uses=max_devices,
            uses=0,
        )
    )
    detail = {"name": name, "role": role, "device_id": device_id, "max_devices": max_devices}
    db.add_audit(conn, "cli", "token.create", None, detail)
    return token


def revoke_token(conn, name: str) -> int:
    """Revoke every token of this name; returns how many."""
    n = conn.execute(db.tokens.update().where(db.tokens.c.name == name).values(revoked=True)).rowcount
    db.add_audit(conn, "cli", "token.revoke", None, {"name": name, "count": n})
    return n


def enroll_device(conn, who: Identity, device_id: str, target: str, tags: list[str]) -> str:
    """Register a device and issue its own token. Re-enrolling an enrolled device (which revokes its old
    credential) is for admins only: an enrolment token cannot take over a device that already has one."""
    from .ingest import register_device
    from .rollouts import RolloutConflict

    db.lock_fleet(conn)  # two enrolments of one new id at once: the second sees the first's token, gets a 409
    if who.role == "enroll":
        _spend_enrolment(conn, who)
    active = conn.execute(
        sa.select(db.tokens.c.id).where(db.tokens.c.device_id == device_id, db.tokens.c.revoked == sa.false())
    ).first()
    if active is not None:
        if who.role != "admin":
            raise RolloutConflict(
                f"device {device_id!r} is already enrolled",
                hint="an admin can re-enroll it (its old credential is revoked), or use another device id",
            )
        conn.execute(db.tokens.update().where(db.tokens.c.device_id == device_id).values(revoked=True))
    register_device(conn, device_id, target, tags)
    token = create_token(conn, f"device:{device_id}", "device", device_id)
    detail = {"device_id": device_id, "by_role": who.role, "rotated": active is not None}
    db.add_audit(conn, who.name, "device.enroll", None, detail)
    return token


class EnrolmentSpent(InputError):
    """An enrolment token that enrolled its budget of devices (HTTP 403): it cannot mint more identities."""


def _spend_enrolment(conn, who: Identity) -> None:
    """Count one enrolment against the token's ``max_uses`` (under the fleet lock, so a burst cannot overspend)."""
    t = db.tokens.c
    row = conn.execute(sa.select(t.id, t.max_uses, t.uses).where(t.token_hash == who.token_hash)).first()
    if row is None:
        raise EnrolmentSpent(f"enrolment token {who.name!r} is unknown or revoked")
    if row.max_uses is not None and (row.uses or 0) >= row.max_uses:
        raise EnrolmentSpent(
            f"enrolment token {who.name!r} has enrolled its {row.max_uses} device(s); it enrols no more",
            hint="create another enrolment token (factory registry token create --role enroll --max-devices N)",
        )
    conn.execute(db.tokens.update().where(t.id == row.id).values(uses=(row.uses or 0) + 1))


class TokenCache:
    """token hash -> Identity: all tokens reloaded at most every ``ttl`` seconds (a revocation lands within
    it); a token not seen yet is looked up by its hash alone (one indexed row), and an unknown one is
    remembered as unknown for a second, so a stream of made-up tokens costs the database little."""

    def __init__(self, engine, ttl: float = 5.0):
        self.engine, self.ttl = engine, ttl
        self._map: dict[str, Identity] = {}
        self._unknown: dict[str, float] = {}
        self._loaded = -1e9

    def invalidate(self) -> None:
        """Reload on the next lookup (after this process issued or revoked a token)."""
        self._loaded = -1e9

    def _query(self, conn, *where):
        cols = (db.tokens.c.token_hash, db.tokens.c.role, db.tokens.c.name, db.tokens.c.device_id)
        return conn.execute(sa.select(*cols).where(db.tokens.c.revoked == sa.false(), *where)).all()

    def lookup(self, token: str | None) -> Identity | None:
        """The identity of a bearer token, or None for a missing, unknown or revoked one."""
        if not token or len(token) > 200:
            return None
        now = time.monotonic()
        h = hash_token(token)
        if now - self._loaded > self.ttl:
            with self.engine.connect() as conn:
                self._map = {
                    r.token_hash: Identity(r.role, r.name, r.device_id, r.token_hash) for r in self._query(conn)
                }
            self._loaded, self._unknown = now, {}
        if h not in self._map and now - self._unknown.get(h, -1e9) > 1.0:
            with self.engine.connect() as conn:
                rows = self._query(conn, db.tokens.c.token_hash == h)
            if rows:
                self._map[h] = Identity(rows[0].role, rows[0].name, rows[0].device_id, h)
            else:
                if len(self._unknown) > 10_000:
                    self._unknown.clear()
                self._unknown[h] = now
        return self._map.get(h)
