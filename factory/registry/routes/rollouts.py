"""``/v1/rollouts`` and ``/v1/audit``: create and steer staged rollouts (admin), read them and the audit log."""

import re
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from fastapi import Path as PathParam

from ...errors import InputError
from .. import db
from .. import rollouts as ro
from ..auth import Identity
from ..limits import check_depth
from ..services import NAME, Name, Services

__all__ = ["router"]


def router(svc: Services) -> APIRouter:
    """Routes for rollouts and the audit log."""
    api = APIRouter()
    auth = svc.auth()
    engine = svc.engine

    @api.post("/v1/rollouts", status_code=201)
    def create_rollout(plan: Annotated[dict, Body()], who: Annotated[Identity, Depends(auth.admin)]) -> dict:
        with engine.begin() as conn:
            return ro.create(conn, plan, who.name)

    @api.get("/v1/rollouts")
    def list_rollouts(who: Annotated[Identity, Depends(auth.reader)]) -> list[dict]:
        with engine.connect() as conn:
            return ro.list_all(conn)

    @api.get("/v1/rollouts/{name}")
    def rollout_status(name: Name, who: Annotated[Identity, Depends(auth.reader)]) -> dict:
        with engine.connect() as conn:
            out = ro.get(conn, name)
            out["audit"] = db.audit_entries(conn, name, 50)
        return out

    @api.post("/v1/rollouts/{name}/{action}")
    def rollout_action(
        name: Name,
        action: Annotated[str, PathParam(pattern="^(advance|pause|resume|rollback)$")],
        who: Annotated[Identity, Depends(auth.admin)],
        body: Annotated[dict | None, Body()] = None,
    ) -> dict:
        reason = str((body or {}).get("reason", ""))[:1000]
        with engine.begin() as conn:
            return ro.transition(conn, name, action, who.name, reason)

    @api.post("/v1/audit", status_code=201)
    def audit_append(body: Annotated[dict, Body()], who: Annotated[Identity, Depends(auth.admin)]) -> dict:
        """Record a step of the closed loop (``loop.*``) or close a retraining trigger (``retrain.closed``)."""
        action, detail, rollout = body.get("action"), body.get("detail"), body.get("rollout")
        if not isinstance(action, str) or not (
            action == "retrain.closed" or re.fullmatch(r"loop\.[a-z_]{1,40}", action)
        ):
            raise InputError("action must be loop.<step> or retrain.closed; other entries are written by the registry")
        if not isinstance(detail, dict) or len(db.dumps(detail)) > 32_768:
            raise InputError("detail must be a JSON object of at most 32 KB")
        check_depth(detail, "detail")
        if rollout is not None and not (isinstance(rollout, str) and re.fullmatch(NAME, rollout)):
            raise InputError("rollout must be a rollout name")
        with engine.begin() as conn:
            db.add_audit(conn, who.name, action, rollout, detail)
        return {"action": action}

    @api.get("/v1/audit")
    def audit_log(
        who: Annotated[Identity, Depends(auth.admin)],
        rollout: Annotated[str | None, Query(pattern=NAME)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 200,
        action: Annotated[str | None, Query(pattern=r"^[a-z_]{1,40}(\.[a-z_]{1,40}){0,2}$")] = None,
    ) -> list[dict]:
        """The newest entries, oldest first; ``action=capture.read`` lists who fetched which field image."""
        with engine.connect() as conn:
            return db.audit_entries(conn, rollout, limit, action)

    return api
