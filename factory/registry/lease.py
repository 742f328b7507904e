"""A lease in the database: which of several registry replicas runs a singleton job (the rollout evaluator).

The holder renews its lease every time it runs the job; a replica that dies (even with SIGKILL) stops
renewing, and another takes over once the lease has expired. Taking and renewing are each one
conditional ``UPDATE`` (or one ``INSERT`` of a row that does not exist yet), which PostgreSQL and SQLite
both apply atomically, so two replicas never both hold it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import sqlalchemy as sa

from . import db

__all__ = ["Lease", "holder_id"]


def holder_id() -> str:
    """This process, as a lease holder: host, pid and a random suffix (a restarted pid is another holder)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The lease ``name``, held by ``holder`` for ``seconds`` after each successful :meth:`acquire`."""

    def __init__(self, engine, name: str, seconds: float, holder: str | None = None):
        if seconds <= 0:
            raise ValueError("a lease lasts a positive number of seconds")
        self.engine, self.name, self.seconds = engine, name, float(seconds)
        self.holder = holder or holder_id()

    def acquire(self, now: float | None = None) -> bool:
        """Take or renew the lease: True when this holder has it for the next ``seconds``."""
        now = time.time() if now is None else now
        t = db.leases
        with self.engine.begin() as conn:
            taken = conn.execute(
                t.update()
                .where(t.c.name == self.name, sa.or_(t.c.holder == self.holder, t.c.until < now))
                .values(holder=self.holder, until=now + self.seconds)
            ).rowcount
            if taken:
                return True
            if conn.execute(sa.select(t.c.name).where(t.c.name == self.name)).first() is not None:
                return False  # held by another replica, not expired
        try:  # no row yet: the first replica to insert it holds it
            with self.engine.begin() as conn:
                conn.execute(t.insert().values(name=self.name, holder=self.holder, until=now + self.seconds))
            return True
        except sa.exc.IntegrityError:
            return False

    def release(self) -> None:
        """Give the lease up now (on a clean shutdown), so another replica need not wait for it to expire."""
        t = db.leases
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.name == self.name, t.c.holder == self.holder).values(until=0.0))

    def current(self) -> dict | None:
        """``{holder, until}`` of whoever holds the lease (or held it last), or None."""
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(db.leases).where(db.leases.c.name == self.name)).first()
        return None if r is None else {"holder": r.holder, "until": r.until}
