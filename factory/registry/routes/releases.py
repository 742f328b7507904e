"""``/v1/releases``: publish (admin), list, inspect and download (resumable, cacheable) bundles."""

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from ..auth import Identity
from ..releases import get_release, list_releases, verify_and_store
from ..services import NAME, Name, Services

__all__ = ["router"]


def _range(range_: str, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive of an HTTP ``bytes=`` range, or None when it cannot be satisfied."""
    m = re.fullmatch(r"bytes=(\d{0,18})-(\d{0,18})", range_.strip())  # 18 digits: beyond any size, within int64
    if not m or (m[1] == "" and m[2] == ""):
        return None
    if m[1] == "":
        start, end = max(0, size - int(m[2])), size - 1
    else:
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
    if start >= size or start > end:
        return None
    return start, end


def _matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match semantics (RFC 9110): ``*`` matches any current representation; weak comparison."""
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in [t.removeprefix("W/") for t in tags]


def router(svc: Services) -> APIRouter:
    """Routes for releases."""
    api = APIRouter()
    auth = svc.auth()
    engine, store, settings = svc.engine, svc.store, svc.settings

    @api.get("/v1/releases")
    def releases(
        who: Annotated[Identity, Depends(auth.caller)], name: Annotated[str | None, Query(pattern=NAME)] = None
    ) -> list[dict]:
        with engine.connect() as conn:
            return list_releases(conn, name)

    @api.get("/v1/releases/{name}/{version}/{target}")
    def inspect_release(
        name: Name, version: Name, target: Name, who: Annotated[Identity, Depends(auth.caller)]
    ) -> dict:
        with engine.connect() as conn:
            r = get_release(conn, name, version, target)
        return {
            "name": r.name,
            "version": r.version,
            "target": r.target,
            "sha256": r.sha256,
            "size": r.size,
            "published_at": r.published_at,
            "published_by": r.published_by,
            "manifest": json.loads(r.manifest),
        }

    @api.get("/v1/releases/{name}/{version}/{target}/bundle", operation_id="download_bundle")
    @api.head("/v1/releases/{name}/{version}/{target}/bundle", operation_id="head_bundle")
    def download(
        name: Name,
        version: Name,
        target: Name,
        who: Annotated[Identity, Depends(auth.caller)],
        range_: Annotated[str | None, Header(alias="range")] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        with engine.connect() as conn:
            r = get_release(conn, name, version, target)
        etag = f'"{r.sha256}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "public, max-age=31536000, immutable",
            "Content-Type": "application/gzip",
        }
        if if_none_match and _matches(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag})
        size = int(r.size)
        if range_:
            span = _range(range_, size)
            if span is None:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = span
            headers |= {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
            return StreamingResponse(store.iter_range(r.storage_key, start, end), status_code=206, headers=headers)
        headers["Content-Length"] = str(size)
        return StreamingResponse(store.iter_range(r.storage_key), headers=headers)

    @api.post(
        "/v1/releases",
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def publish(
        request: Request, who: Annotated[Identity, Depends(auth.admin)], allow_failed: bool = False
    ) -> dict:
        limit = settings["max_upload_mb"] * (1 << 20)
        fd, tmp = tempfile.mkstemp(dir=svc.uploads, suffix=".tar.gz")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"upload larger than {settings['max_upload_mb']} MB")
                    f.write(chunk)
            if size == 0:
                raise HTTPException(422, "empty body; send the bundle archive (.tar.gz) as the request body")
            return await run_in_threadpool(
                verify_and_store,
                engine,
                store,
                svc.keys,
                svc.uploads,
                Path(tmp),
                who.name,
                allow_failed or settings["allow_failed_bundles"],
            )
        finally:
            Path(tmp).unlink(missing_ok=True)

    return api
