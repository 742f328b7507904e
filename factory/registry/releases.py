"""Releases in the database and the blob store: verify a published archive, store it, look one up."""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa

from .._faults import crash_point
from .._io import sha256_file
from ..bundle.archive import unpack, verify_bundle
from ..errors import InputError, SignatureError
from . import db
from .rollouts import NotFound, RolloutConflict

__all__ = ["list_releases", "get_release", "verify_and_store"]


def list_releases(conn, name: str | None = None) -> list[dict]:
    """Every release (optionally of one model), oldest first."""
    q = sa.select(
        db.releases.c.name,
        db.releases.c.version,
        db.releases.c.target,
        db.releases.c.sha256,
        db.releases.c.size,
        db.releases.c.published_at,
    ).order_by(db.releases.c.id)
    if name:
        q = q.where(db.releases.c.name == name)
    return [dict(r._mapping) for r in conn.execute(q).all()]


def get_release(conn, name: str, version: str, target: str):
    """The release row, or NotFound (404)."""
    r = conn.execute(
        sa.select(db.releases).where(
            db.releases.c.name == name, db.releases.c.version == version, db.releases.c.target == target
        )
    ).first()
    if r is None:
        raise NotFound(f"no release {name} {version} for target {target}")
    return r


def _verified(path: Path, keys: list, uploads: Path):
    with tempfile.TemporaryDirectory(dir=uploads) as tmp:
        folder = unpack(path, Path(tmp) / "bundle", trusted_keys=keys)  # signature first, then the files
        errors = []
        for k in keys:
            try:
                return verify_bundle(folder, k)["manifest"]
            except SignatureError as exc:
                errors.append(exc.message)
    raise SignatureError("the bundle is not signed by a trusted key: " + "; ".join(errors))


def verify_and_store(engine, store, keys: list, uploads: Path, path: Path, actor: str, allow_failed: bool) -> dict:
    """Verify an uploaded archive against the trusted keys, then store blob and row.

    The signature is checked before the archive's files are even unpacked. Releases are immutable:
    the same archive again is a no-op, other content under the same name/version/target is a 409 that
    stores nothing. The blob lands before the row (no row ever points at a missing blob); a row that
    loses a race to a concurrent publish leaves no orphan blob behind.
    """
    if not keys:
        raise SignatureError(
            "the registry has no trusted public keys configured", hint="set trusted_keys in the registry config"
        )
    manifest = _verified(path, keys, uploads)
    if not manifest.passed and not allow_failed:
        raise InputError(
            "the bundle failed its own budgets (validation.passed: false); not publishing it",
            hint="rebuild within budget, or publish with allow_failed=true",
        )
    sha = sha256_file(path)
    name, version, target = manifest.name, manifest.version, manifest.target
    release = {"name": name, "version": version, "target": target, "sha256": sha}

    def existing(conn):
        return conn.execute(
            sa.select(db.releases.c.sha256).where(
                db.releases.c.name == name, db.releases.c.version == version, db.releases.c.target == target
            )
        ).first()

    def conflict() -> RolloutConflict:
        return RolloutConflict(
            f"release {name} {version} {target} already exists with other content",
            hint="releases are immutable; publish a new version",
        )

    with engine.connect() as conn:
        old = existing(conn)
    if old is not None:
        if old.sha256 == sha:
            return release | {"created": False}
        raise conflict()
    key = store.key_for(sha)
    store.put_file(path, key)
    crash_point("publish-blob-stored")  # a crash here leaves a blob no row names: swept by sweep_orphans
    try:
        with engine.begin() as conn:
            conn.execute(
                db.releases.insert().values(
                    name=name,
                    version=version,
                    target=target,
                    sha256=sha,
                    size=path.stat().st_size,
                    storage_key=key,
                    manifest=db.dumps(manifest.to_dict()),
                    published_at=db.now(),
                    published_by=actor,
                )
            )
            db.add_audit(conn, actor, "release.publish", None, {"release": f"{name}/{version}/{target}", "sha256": sha})
            db.bump_state(conn)
    except sa.exc.IntegrityError:  # a concurrent publish of the same name/version/target won
        with engine.connect() as conn:
            old = existing(conn)
            referenced = conn.execute(sa.select(db.releases.c.id).where(db.releases.c.sha256 == sha)).first()
        if referenced is None:
            store.delete(key)
        if old is not None and old.sha256 == sha:
            return release | {"created": False}
        raise conflict() from None
    return release | {"created": True}
