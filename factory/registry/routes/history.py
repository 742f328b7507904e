"""``/v1/history/...`` and the pages that draw it: a rollout's life, a release, a device (read-only)."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from ..auth import Identity
from ..history import device_history, release_history, rollout_history
from ..history_page import live
from ..services import DEVICE, Name, Services

__all__ = ["router"]


def router(svc: Services) -> APIRouter:
    """Routes of the history API and its pages."""
    api = APIRouter()
    auth = svc.auth()
    engine, window = svc.engine, svc.settings["telemetry"]["window_seconds"]
    page = live()

    @api.get("/v1/history/rollouts/{name}")
    def rollout(name: Name, who: Annotated[Identity, Depends(auth.reader)]) -> dict:
        with engine.connect() as conn:
            return rollout_history(conn, name, window)

    @api.get("/v1/history/releases/{name}/{version}/{target}")
    def release(name: Name, version: Name, target: Name, who: Annotated[Identity, Depends(auth.reader)]) -> dict:
        with engine.connect() as conn:
            return release_history(conn, name, version, target)

    @api.get("/v1/history/devices/{device_id}")
    def device(
        device_id: Annotated[str, PathParam(pattern=DEVICE)], who: Annotated[Identity, Depends(auth.reader)]
    ) -> dict:
        with engine.connect() as conn:
            return device_history(conn, device_id, window)

    for path in ("/status/rollouts/{rest:path}", "/status/releases/{rest:path}", "/status/devices/{rest:path}"):

        @api.get(path, response_class=HTMLResponse, include_in_schema=False)
        def history_page(rest: str) -> str:  # the data comes from /v1/history with the viewer's token
            return page

    return api
