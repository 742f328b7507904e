"""``/v1/captures``: field frames devices upload when a rollout plan asks for them; admins list and fetch them."""

import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..auth import Identity
from ..captures import CaptureRefused, accept_capture, list_captures
from ..services import NAME, Services

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
        raw = await request.body()  # bounded while read (factory.registry.limits)
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPException(422, "body is not JSON") from None

        def work() -> dict:
            with engine.begin() as conn:
                return accept_capture(conn, store, svc.states.get(), body, who, time.time())

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
        with engine.connect() as conn:
            return {"captures": list_captures(conn, rollout, release)}

    @api.get("/v1/captures/{capture_id}/image")
    def image(
        capture_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], who: Annotated[Identity, Depends(auth.admin)]
    ) -> Response:
        with engine.connect() as conn:
            rows = list_captures(conn, capture_id=capture_id)
        if not rows:
            raise HTTPException(404, f"no capture {capture_id}")
        data = store.read(store.capture_key(rows[0]["sha256"]))
        return Response(data, media_type="image/jpeg" if data[:2] == b"\xff\xd8" else "image/png")

    return api
