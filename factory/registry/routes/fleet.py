"""``/v1/assignment`` and ``/v1/fleet-manifest``: which release each device runs, live or signed for a CDN."""

import hashlib
import json
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from ...bundle.signing import load_private_key
from ...device.assign import assign
from .. import rollouts as ro
from ..auth import Identity
from ..services import DEVICE, NAME, TAGS, Services, require_device
from ..state import sign_state

__all__ = ["router"]


def router(svc: Services) -> APIRouter:
    """Routes for assignments and the static fleet manifest."""
    api = APIRouter()
    auth = svc.auth()
    states, settings = svc.states, svc.settings
    signed: dict = {}  # the signed manifest of the current state sequence: signed once, served many times
    lock = threading.Lock()

    @api.get("/v1/assignment")
    async def assignment(
        who: Annotated[Identity, Depends(auth.caller)],
        model: Annotated[str, Query(pattern=NAME)],
        device_id: Annotated[str, Query(pattern=DEVICE)],
        target: Annotated[str, Query(pattern=NAME)],
        tags: Annotated[str, Query(pattern=TAGS)] = "",
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        if who.role == "device":
            require_device(who, device_id)
        state = states.get()
        result = assign(state, model, device_id, target, [t for t in tags.split(",") if t])
        body = json.dumps(result.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=30", "X-Fleet-State": str(state["sequence"])}
        if if_none_match == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    @api.get("/v1/fleet-manifest")
    def fleet_manifest(who: Annotated[Identity, Depends(auth.caller)]) -> Response:
        if not Path(settings["fleet_key"]).is_file():
            raise ro.NotFound(
                "this registry has no fleet key to sign static manifests with",
                hint="create one (factory keys generate --out keys/fleet) and set fleet_key",
            )
        state = states.get()
        with lock:
            if signed.get("sequence") != state["sequence"]:
                doc = sign_state(state, load_private_key(settings["fleet_key"]))
                signed.update(sequence=state["sequence"], body=json.dumps(doc, separators=(",", ":")).encode())
            body = signed["body"]
        return Response(body, media_type="application/json")

    return api
