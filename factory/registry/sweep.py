"""Blobs that no row names: what a crash between storing a blob and committing its row leaves behind.

A field capture is personal data: an image whose row was never committed would never reach its retention
date, so it must not outlive the crash. Bundle archives orphaned the same way only waste space. Both are
removed once older than ``older_than`` (an upload in flight on another replica has its row within
seconds), with the unfinished uploads under ``tmp/``. The evaluator lease holder runs it periodically.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from . import db

__all__ = ["sweep_orphans"]


def _sha(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def sweep_orphans(engine, store, now: float | None = None, older_than: float = 3600.0) -> dict:
    """Delete capture images and bundle archives no row refers to, and stale partial uploads; counts."""
    now = time.time() if now is None else now
    out = {"captures": 0, "bundles": 0, "tmp": store.clean_tmp(older_than)}
    for kind, column in (("captures", db.captures.c.sha256), ("bundles", db.releases.c.sha256)):
        old = [k for k, modified in store.listing(kind) if modified < now - older_than]
        if not old:
            continue
        named = set()
        with engine.connect() as conn:
            for i in range(0, len(old), 500):
                shas = [_sha(k) for k in old[i : i + 500]]
                named |= {r[0] for r in conn.execute(sa.select(column).where(column.in_(shas)))}
        for key in old:
            if _sha(key) not in named:
                store.delete(key)
                out[kind] += 1
    return out
