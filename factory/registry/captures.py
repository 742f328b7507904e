"""Field captures: frames devices upload because a rollout plan asked them to (opt-in, capped, expiring).

A capture is accepted only when every check passes, before anything is stored: the caller speaks for
the device; the device is registered; the fleet state, right now, assigns it the named release
through the named rollout *and* that rollout's plan asks for captures (a plan without ``capture``
gets none, a device outside the cohort or the current stage gets none); the image is at most the
plan's ``max_bytes`` and decodes as an image of sane size; the device has not reached
``max_per_device_per_day``. Then the image goes into the blob store (content-addressed) and a row
with its metadata (device, release, window, reason, the model's own output) into the database, with
the plan's retention; :func:`purge_expired` removes what has expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading

import sqlalchemy as sa

from .._faults import crash_point
from ..device.assign import assign
from ..errors import InputError
from . import db
from .limits import check_depth

__all__ = ["CaptureRefused", "accept_capture", "list_captures", "purge_expired", "REASONS"]

REASONS = ("low_confidence", "drifting", "random")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096  # a field photo; 64 MB of BGR pixels at most per decode
MAX_OUTPUT_BYTES = 16_384
DECODERS = 2  # captures decoded at once (the rest wait, then get a 503 with Retry-After)
DECODE_WAIT_SECONDS = 10.0
_DECODING = threading.BoundedSemaphore(DECODERS)


class CaptureRefused(InputError):
    """A capture the registry will not store; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


def _fields(body: object) -> dict:
    if not isinstance(body, dict):
        raise CaptureRefused(422, "a capture is a JSON object")
    for k in ("idempotency_key", "device_id", "rollout"):
        if not isinstance(body.get(k), str) or not _ID.match(body[k]):
            raise CaptureRefused(422, f"{k} must be 1-200 characters of [A-Za-z0-9._:-]")
    rel = body.get("release")
    if not isinstance(rel, dict) or not all(
        isinstance(rel.get(k), str) and _ID.match(rel[k]) for k in ("name", "version", "target")
    ):
        raise CaptureRefused(422, "release must be {name, version, target}")
    if body.get("reason") not in REASONS:
        raise CaptureRefused(422, f"reason must be one of {list(REASONS)}")
    ws = body.get("window_start")
    if ws is not None and not (isinstance(ws, (int, float)) and not isinstance(ws, bool) and math.isfinite(ws)):
        raise CaptureRefused(422, "window_start must be epoch seconds")
    output = body.get("output")
    if len(json.dumps(output)) > MAX_OUTPUT_BYTES:
        raise CaptureRefused(422, f"output (the model's answer) larger than {MAX_OUTPUT_BYTES} bytes")
    for k in ("output", "simulated", "source"):  # stored and served back to admins: flat enough to serialize
        try:
            check_depth(body.get(k), k)
        except InputError as exc:
            raise CaptureRefused(422, exc.message, exc.hint) from None
    if not isinstance(body.get("image"), str):
        raise CaptureRefused(422, "image must be the JPEG or PNG file, base64-encoded")
    return body


def _decode(text: str, max_bytes: int) -> tuple[bytes, int, int]:
    if len(text) > (max_bytes * 4) // 3 + 8:
        raise CaptureRefused(413, f"image larger than the plan's max_bytes ({max_bytes})")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CaptureRefused(422, "image is not valid base64") from None
    if len(data) > max_bytes:
        raise CaptureRefused(413, f"image of {len(data)} bytes is larger than the plan's max_bytes ({max_bytes})")
    from ..imagesize import ImageTooLarge, decode_checked

    # sized from its header before a pixel is decoded (a 48 KB PNG can declare 20000 x 20000), and decoded
    # by at most DECODERS requests at once: captures cannot take the memory the registry serves from
    if not _DECODING.acquire(timeout=DECODE_WAIT_SECONDS):
        raise CaptureRefused(503, "the registry is busy decoding other captures; retry later")
    try:
        img = (
            decode_checked(data, what="the image", max_side=MAX_SIDE, max_pixels=MAX_PIXELS, formats=("jpeg", "png"))
            if data
            else None
        )
    except ImageTooLarge as exc:
        raise CaptureRefused(413, exc.message, exc.hint) from None
    except InputError as exc:
        raise CaptureRefused(422, exc.message) from None
    finally:
        _DECODING.release()
    if img is None or min(img.shape[:2]) < 8 or max(img.shape[:2]) > MAX_SIDE:
        raise CaptureRefused(422, "image does not decode as a JPEG/PNG of 8 to 8192 pixels a side (corrupt?)")
    return data, int(img.shape[1]), int(img.shape[0])


def accept_capture(conn, store, state: dict, body: object, who, now: float) -> dict:
    """Check one capture (see the module docstring) and store it; refuse it with a :class:`CaptureRefused`."""
    c = _fields(body)
    if not who.speaks_for(c["device_id"]):
        raise CaptureRefused(403, f"token {who.name!r} does not speak for device {c['device_id']!r}")
    device = conn.execute(sa.select(db.devices).where(db.devices.c.device_id == c["device_id"])).first()
    if device is None:
        raise CaptureRefused(403, f"device {c['device_id']!r} is not registered", "register (or enrol) it first")
    rel = c["release"]
    a = assign(state, rel["name"], c["device_id"], device.target, json.loads(device.tags))
    key = f"{rel['name']}/{rel['version']}/{rel['target']}"
    current = a.release and f"{a.release['name']}/{a.release['version']}/{a.release['target']}"
    if a.rollout != c["rollout"] or current != key or not a.capture:
        raise CaptureRefused(
            403,
            f"device {c['device_id']!r} is not asked to capture by rollout {c['rollout']!r} for {key} "
            f"(its assignment: {current or 'none'} via {a.rollout or 'no rollout'}, "
            f"{'with' if a.capture else 'without'} a capture policy)",
            "only a rollout whose plan has a capture block, for the devices it moved to its release, collects frames",
        )
    policy = a.capture

    def duplicate():
        row = conn.execute(
            sa.select(db.captures.c.id, db.captures.c.device_id).where(
                db.captures.c.idempotency_key == c["idempotency_key"]
            )
        ).first()
        if row is not None and row.device_id != c["device_id"]:  # never confirm (or reveal) another's capture
            raise CaptureRefused(
                409,
                f"idempotency key {c['idempotency_key']!r} belongs to another device's capture; nothing was stored",
                "use keys that start with the device id",
            )
        return row

    def check_cap() -> None:
        today = conn.execute(
            sa.select(sa.func.count())
            .select_from(db.captures)
            .where(db.captures.c.device_id == c["device_id"], db.captures.c.received_at >= now - 86400)
        ).scalar()
        if today >= policy["max_per_device_per_day"]:
            raise CaptureRefused(
                429,
                f"device {c['device_id']!r} reached the plan's {policy['max_per_device_per_day']} captures a day",
                "keep the frame and try again tomorrow, or raise capture.max_per_device_per_day in the plan",
            )

    if (existing := duplicate()) is not None:
        return {"status": "duplicate", "id": existing.id}
    data, width, height = _decode(c["image"], policy["max_bytes"])
    # Checked under the device's row lock: concurrent uploads of one device (or retries of one key)
    # are counted one at a time, so no burst gets past the cap or stores one key twice.
    db.lock_device(conn, c["device_id"])
    if (existing := duplicate()) is not None:
        return {"status": "duplicate", "id": existing.id}
    check_cap()
    sha = hashlib.sha256(data).hexdigest()
    store.put_bytes(data, store.capture_key(sha))
    meta = {k: c[k] for k in ("simulated", "source") if k in c and len(json.dumps(c[k])) < 2000}
    row = conn.execute(
        db.captures.insert().values(
            idempotency_key=c["idempotency_key"],
            device_id=c["device_id"],
            release_key=key,
            rollout=c["rollout"],
            window_start=c.get("window_start"),
            reason=c["reason"],
            output=db.dumps(c.get("output")),
            sha256=sha,
            size=len(data),
            width=width,
            height=height,
            meta=db.dumps(meta),
            received_at=now,
            expires_at=now + 86400 * policy["retention_days"],
        )
    )
    crash_point("capture-row-written")  # image stored, row not committed: swept by sweep_orphans
    return {"status": "accepted", "id": int(row.inserted_primary_key[0]), "sha256": sha}


def _row(r) -> dict:
    return {
        "id": r.id,
        "device_id": r.device_id,
        "release": r.release_key,
        "rollout": r.rollout,
        "window_start": r.window_start,
        "reason": r.reason,
        "output": json.loads(r.output),
        "sha256": r.sha256,
        "size": r.size,
        "width": r.width,
        "height": r.height,
        "meta": json.loads(r.meta),
        "received_at": r.received_at,
        "expires_at": r.expires_at,
    }


def list_captures(
    conn, rollout: str | None = None, release: str | None = None, limit: int = 10_000, capture_id: int | None = None
) -> list[dict]:
    """Captures (oldest first), of one rollout or release if named (or the one of ``capture_id``)."""
    q = sa.select(db.captures).order_by(db.captures.c.id).limit(limit)
    if capture_id is not None:
        q = q.where(db.captures.c.id == capture_id)
    if rollout:
        q = q.where(db.captures.c.rollout == rollout)
    if release:
        q = q.where(db.captures.c.release_key == release)
    return [_row(r) for r in conn.execute(q).all()]


def purge_expired(conn, store, now: float) -> int:
    """Delete captures past their retention, and their images once no capture refers to them."""
    old = conn.execute(sa.select(db.captures.c.id, db.captures.c.sha256).where(db.captures.c.expires_at < now)).all()
    if not old:
        return 0
    conn.execute(db.captures.delete().where(db.captures.c.id.in_([r.id for r in old])))
    for sha in {r.sha256 for r in old}:
        if conn.execute(sa.select(db.captures.c.id).where(db.captures.c.sha256 == sha)).first() is None:
            store.delete(store.capture_key(sha))
    return len(old)
