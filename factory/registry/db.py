"""Registry metadata in SQL (SQLite by default, PostgreSQL at scale) via SQLAlchemy Core.

Tables: releases, tokens (hashed), rollouts, stable (the release each model/target runs outside
rollouts), audit (append-only: the code only ever inserts), state (a version counter bumped on every
change, so replicas know when to refresh their cached fleet state), devices, telemetry, captures,
windows (rolled-up history) and leases (which replica runs the periodic rollout evaluation).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

__all__ = [
    "metadata",
    "releases",
    "tokens",
    "rollouts",
    "stable",
    "audit",
    "state",
    "devices",
    "telemetry",
    "captures",
    "windows",
    "leases",
    "engine_for",
    "now",
    "bump_state",
    "lock_fleet",
    "lock_device",
    "state_version",
    "add_audit",
    "audit_entries",
    "dumps",
]

metadata = sa.MetaData()

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(100), nullable=False),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("storage_key", sa.String(400), nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("published_at", sa.String(40), nullable=False),
    sa.Column("published_by", sa.String(200), nullable=False),
    sa.UniqueConstraint("name", "version", "target", name="uq_release"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("device_id", sa.String(200), index=True),  # the one device a device token speaks for
    sa.Column("max_uses", sa.Integer),  # an enrolment token's budget of devices (None: unlimited)
    sa.Column("uses", sa.Integer),  # how many devices it enrolled
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("stage_started_at", sa.String(40), nullable=False),
    sa.Column("releases", sa.Text, nullable=False),  # target -> release key
    sa.Column("previous", sa.Text, nullable=False),  # target -> release key devices fall back to
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

stable = sa.Table(
    "stable",
    metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("target", sa.String(100), primary_key=True),
    sa.Column("release_key", sa.String(500), nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("rollout", sa.String(200)),
    sa.Column("detail", sa.Text, nullable=False),
)

state = sa.Table(
    "state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(200), primary_key=True),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("last_seen", sa.String(40), nullable=False),
    sa.Column("current", sa.String(500)),
)

telemetry = sa.Table(
    "telemetry",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("device_id", sa.String(200), nullable=False, index=True),
    sa.Column("release_key", sa.String(500), nullable=False, index=True),
    sa.Column("rollout", sa.String(200), index=True),
    sa.Column("stage", sa.Integer),
    sa.Column("window_start", sa.Float, nullable=False, index=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
)


captures = sa.Table(
    "captures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("device_id", sa.String(200), nullable=False, index=True),
    sa.Column("release_key", sa.String(500), nullable=False),
    sa.Column("rollout", sa.String(200), nullable=False, index=True),
    sa.Column("window_start", sa.Float),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("output", sa.Text, nullable=False),  # the model's own output on the frame (JSON)
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),  # anything else the device said (JSON, bounded)
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


windows = sa.Table(  # one row per release and telemetry window: the figures the history pages draw
    "windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("release_key", sa.String(500), nullable=False),
    sa.Column("resolution", sa.Integer, nullable=False),  # seconds: the telemetry window, or 3600 (hourly merges)
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("figures", sa.Text, nullable=False),
    sa.UniqueConstraint("release_key", "resolution", "window_start", name="uq_windows_release_res_start"),
    sa.Index("ix_windows_release_res_start", "release_key", "resolution", "window_start"),
)


leases = sa.Table(  # one row per singleton job of the replicas (the rollout evaluator): who holds it, until when
    "leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("until", sa.Float, nullable=False),
)


def now() -> str:
    """UTC now, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def dumps(obj) -> str:
    """Compact, key-sorted JSON for stored columns."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def engine_for(url: str) -> sa.Engine:
    """An engine with the tables created; SQLite gets WAL mode and a busy timeout for concurrency."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # pragma: no cover - exercised through the engine
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    metadata.create_all(engine)
    _migrate(engine)
    with engine.begin() as conn:
        if conn.execute(sa.select(state.c.version).where(state.c.id == 1)).first() is None:
            conn.execute(state.insert().values(id=1, version=0))
    return engine


def _migrate(engine) -> None:
    """Columns added after a table was first created (create_all never alters an existing table)."""
    added = {"tokens": [("device_id", "VARCHAR(200)"), ("max_uses", "INTEGER"), ("uses", "INTEGER")]}
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table, columns in added.items():
            have = {c["name"] for c in inspector.get_columns(table)}
            for name, sql_type in columns:
                if name not in have:
                    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


def bump_state(conn) -> None:
    """Move the fleet-state version on: every replica rebuilds its cached state."""
    conn.execute(state.update().where(state.c.id == 1).values(version=state.c.version + 1))


def lock_fleet(conn) -> None:
    """Hold the registry's write lock until this transaction ends: a check-then-insert after it (is this
    device id enrolled yet?) cannot interleave with another one. A no-op write on the state row: the row's
    lock in PostgreSQL, the database's write lock in SQLite; the checks that follow read committed data."""
    conn.execute(state.update().where(state.c.id == 1).values(version=state.c.version))


def lock_device(conn, device_id: str) -> None:
    """Like :func:`lock_fleet` for one device's row: its counters (captures a day) are checked and
    bumped by one request at a time."""
    conn.execute(devices.update().where(devices.c.device_id == device_id).values(last_seen=devices.c.last_seen))


def state_version(conn) -> int:
    """The current fleet-state version."""
    return int(conn.execute(sa.select(state.c.version).where(state.c.id == 1)).scalar_one())


def add_audit(conn, actor: str, action: str, rollout: str | None, detail: dict) -> None:
    """Append one entry to the audit log (never updated or deleted)."""
    conn.execute(audit.insert().values(ts=now(), actor=actor, action=action, rollout=rollout, detail=dumps(detail)))


def audit_entries(conn, rollout: str | None = None, limit: int = 200, action: str | None = None) -> list[dict]:
    """The newest ``limit`` audit entries (of one rollout, of one action, if named), oldest first."""
    q = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
    if rollout:
        q = q.where(audit.c.rollout == rollout)
    if action:
        q = q.where(audit.c.action == action)
    return [
        {
            "id": r.id,
            "ts": r.ts,
            "actor": r.actor,
            "action": r.action,
            "rollout": r.rollout,
            "detail": json.loads(r.detail),
        }
        for r in reversed(conn.execute(q).all())
    ]
