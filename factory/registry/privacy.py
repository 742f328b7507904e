"""Field captures as personal data: every read is audit-logged, and one device's data can be deleted on request.

``capture.read`` and ``capture.list`` entries name who read what (the capture id, its device, its image's
sha256, or the filter and the count of a listing); admins read them with ``GET /v1/audit?action=capture.read``.
:func:`forget_device` deletes a device's captures (rows, and images no other capture names) and its raw
telemetry, and with ``revoke`` its registration and tokens too; the rolled-up history keeps only
per-release figures (counts, percentiles, drift), which name no device. The deletion itself is audited
with its counts (the audit log is append-only: entries that name the device stay).
"""

from __future__ import annotations

import sqlalchemy as sa

from . import db

__all__ = ["audit_capture_read", "audit_capture_list", "forget_device"]


def audit_capture_read(conn, actor: str, capture: dict) -> None:
    """Record that ``actor`` fetched the image of ``capture`` (a row of :func:`~.captures.list_captures`)."""
    detail = {
        "capture_id": capture["id"],
        "device_id": capture["device_id"],
        "sha256": capture["sha256"],
        "rollout": capture["rollout"],
    }
    # not filed under the rollout: reads must not crowd its decisions out of its timeline and history page
    db.add_audit(conn, actor, "capture.read", None, detail)


def audit_capture_list(conn, actor: str, rollout: str | None, release: str | None, rows: list[dict]) -> None:
    """Record that ``actor`` listed captures' metadata (which filter, how many, of which devices)."""
    devices = sorted({r["device_id"] for r in rows})
    detail = {"rollout": rollout, "release": release, "count": len(rows), "devices": devices[:100]}
    db.add_audit(conn, actor, "capture.list", None, detail | {"device_count": len(devices)})


def forget_device(engine, store, device_id: str, actor: str, revoke: bool = False) -> dict:
    """Delete ``device_id``'s captures and telemetry (and with ``revoke`` its registration and tokens); counts.

    The rows go in one transaction, audited in it; the images after it commits, each once no capture names
    it any more (identical frames share one blob). A crash between the two leaves orphaned images that
    :func:`~.sweep.sweep_orphans` removes within the hour; no row ever names a deleted image.
    """
    c = db.captures.c
    with engine.begin() as conn:
        db.lock_device(conn, device_id)
        shas = {r.sha256 for r in conn.execute(sa.select(c.sha256).where(c.device_id == device_id))}
        captures = conn.execute(db.captures.delete().where(c.device_id == device_id)).rowcount
        telemetry = conn.execute(db.telemetry.delete().where(db.telemetry.c.device_id == device_id)).rowcount
        shared = {r.sha256 for r in conn.execute(sa.select(c.sha256).where(c.sha256.in_(shas)))} if shas else set()
        gone = shas - shared  # images only this device's captures named
        out = {"device_id": device_id, "captures": captures, "images": len(gone), "telemetry": telemetry}
        if revoke:
            t = db.tokens.c
            out["tokens_revoked"] = conn.execute(
                db.tokens.update().where(t.device_id == device_id, t.revoked == sa.false()).values(revoked=True)
            ).rowcount
            out["registration"] = conn.execute(db.devices.delete().where(db.devices.c.device_id == device_id)).rowcount
        db.add_audit(conn, actor, "device.forget", None, dict(out, revoke=revoke))
    for sha in gone:
        store.delete(store.capture_key(sha))
    return out
