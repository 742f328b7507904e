"""``/v1/captures``: field frames devices upload when a rollout plan asks for them; admins list and fetch them
(every listing and every image fetched is audit-logged), and ``DELETE /v1/devices/{id}/data`` forgets a device."""

import time
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..auth import Identity
from ..captures import CaptureRefused, accept_capture, list_captures
from ..limits import parse_json
from ..privacy import audit_capture_list, audit_capture_read, forget_device
from ..services import DEVICE, NAME, Services

__all__ = ["router", "MAX_BODY"]

MAX_BODY = 2_000_000 * 4 // 3 + 65_536  # the largest image a plan may allow, base64, plus its metadata


def router(svc: Services) -> APIRouter:
    """Routes for field captures (upload by devices, list and fetch by admins)."""
    api = APIRouter()
    auth = svc.auth()
    engine, store = svc.engine, svc.store

    @api.post(
        "/v1/captures",
        status_code=201,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def upload(request: Request, who: Annotated[Identity, Depends(auth.caller)]) -> dict:
        body = parse_json(await request.body(), "the capture")  # bounded while read (factory.registry.limits)

        def work() -> dict:
            try:
                with engine.begin() as conn:
                    return accept_capture(conn, store, svc.states.get(), body, who, time.time())
            except sa.exc.IntegrityError:  # another device's upload took this idempotency key first
                raise CaptureRefused(
                    409,
                    f"idempotency key {body.get('idempotency_key')!r} belongs to another capture",
                    "use keys that start with the device id; nothing was stored",
                ) from None

        try:
            return await run_in_threadpool(work)
        except CaptureRefused as exc:
            retry = {"Retry-After": "5"} if exc.status == 503 else None
            text = exc.message + (f" ({exc.hint})" if exc.hint else "")
            raise HTTPException(exc.status, text, headers=retry) from None

    @api.get("/v1/captures")
    def captures(
        who: Annotated[Identity, Depends(auth.admin)],
        rollout: Annotated[str | None, Query(pattern=NAME)] = None,
        release: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._/-]{1,500}$")] = None,
    ) -> dict:
        with engine.begin() as conn:  # metadata of field frames is personal data too: the listing is audited
            rows = list_captures(conn, rollout, release)
            audit_capture_list(conn, who.name, rollout, release, rows)
        return {"captures": rows}

    @api.get("/v1/captures/{capture_id}/image")
    def image(
        capture_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], who: Annotated[Identity, Depends(auth.admin)]
    ) -> Response:
        with engine.connect() as conn:
            rows = list_captures(conn, capture_id=capture_id)
        if not rows:
            raise HTTPException(404, f"no capture {capture_id}")
        try:
            data = store.read(store.capture_key(rows[0]["sha256"]))
        except FileNotFoundError:
            raise HTTPException(404, f"capture {capture_id}'s image is gone (expired or forgotten)") from None
        with engine.begin() as conn:  # audited once the image is in hand, before a byte of it is sent
            audit_capture_read(conn, who.name, rows[0])
        headers = {  # a field photo: never cached on the way, never sniffed into anything but an image
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="capture-{capture_id}"',
        }
        return Response(data, media_type="image/jpeg" if data[:2] == b"\xff\xd8" else "image/png", headers=headers)

    @api.delete("/v1/devices/{device_id}/data")
    def forget(
        device_id: Annotated[str, PathParam(pattern=DEVICE)],
        who: Annotated[Identity, Depends(auth.admin)],
        revoke: bool = False,
    ) -> dict:
        """Delete one device's captures (rows and images) and telemetry; ``revoke=true``: its registration and
        tokens too. Audited as ``device.forget`` with the counts."""
        out = forget_device(engine, store, device_id, who.name, revoke)
        if revoke:
            svc.tokens.invalidate()
        return out

    return api
