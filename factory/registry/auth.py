"""Bearer tokens with two roles: ``admin`` (publish, rollouts) and ``device`` (pull, telemetry).

Only the sha256 of a token is stored; the token itself is shown once, when created. A device token
can never publish or change a rollout.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import sqlalchemy as sa

from ..errors import InputError
from . import db

__all__ = ["ROLES", "hash_token", "create_token", "revoke_token", "TokenCache"]

ROLES = ("admin", "device")


def hash_token(token: str) -> str:
    """What the database stores of a token: its sha256."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn, name: str, role: str) -> str:
    """Create a token with a role; returns it (the only time it is visible)."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    token = f"fct_{role[0]}_{secrets.token_urlsafe(32)}"
    conn.execute(
        db.tokens.insert().values(
            name=name, role=role, token_hash=hash_token(token), created_at=db.now(), revoked=False
        )
    )
    db.add_audit(conn, "cli", "token.create", None, {"name": name, "role": role})
    return token


def revoke_token(conn, name: str) -> int:
    """Revoke every token of this name; returns how many."""
    n = conn.execute(db.tokens.update().where(db.tokens.c.name == name).values(revoked=True)).rowcount
    db.add_audit(conn, "cli", "token.revoke", None, {"name": name, "count": n})
    return n


class TokenCache:
    """token hash -> (role, name), reloaded at most every ``ttl`` seconds (a revocation lands within it)."""

    def __init__(self, engine, ttl: float = 5.0):
        self.engine, self.ttl = engine, ttl
        self._map: dict[str, tuple[str, str]] = {}
        self._loaded = -1e9

    def lookup(self, token: str | None) -> tuple[str, str] | None:
        if not token:
            return None
        now = time.monotonic()
        h = hash_token(token)
        if now - self._loaded > self.ttl or (h not in self._map and now - self._loaded > 0.2):
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(db.tokens.c.token_hash, db.tokens.c.role, db.tokens.c.name).where(
                        db.tokens.c.revoked == sa.false()
                    )
                ).all()
            self._map = {r.token_hash: (r.role, r.name) for r in rows}
            self._loaded = now
        return self._map.get(h)
