"""``/v1/devices``, ``/v1/telemetry`` (single and batch) and ``/v1/evaluate``: devices report, the monitor judges."""

import json
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from ...errors import InputError
from ..health import evaluate_rollouts
from ..ingest import Ingestor, register_device
from ..monitoring import check_retraining
from ..services import DEVICE, NAME, Services, matches

__all__ = ["router"]


def router(svc: Services, metrics) -> tuple[APIRouter, object]:
    """Routes for devices and telemetry; also returns ``evaluate()`` for the background evaluator."""
    api = APIRouter()
    caller, admin = svc.auth()
    engine, tele = svc.engine, svc.settings["telemetry"]
    ingestor = Ingestor(engine, tele["max_summary_bytes"])
    lock = threading.Lock()

    def evaluate() -> dict:
        with lock:  # one evaluation at a time per process; transitions are guarded by status checks in SQL
            now = time.time()
            decisions = evaluate_rollouts(engine, tele["window_seconds"], now)
            triggers = check_retraining(
                engine,
                tele["window_seconds"],
                now,
                windows=tele.get("retrain_windows", 3),
                max_psi=tele.get("retrain_max_psi", 0.25),
                max_js=tele.get("retrain_max_js", 0.1),
            )
        svc.states.invalidate()
        return {"decisions": decisions, "triggers": triggers}

    @api.post("/v1/devices", status_code=201)
    def register(who: Annotated[tuple, Depends(caller)], body: Annotated[dict, Body()]) -> dict:
        device_id, target, tags = body.get("device_id"), body.get("target"), body.get("tags", [])
        if (
            not matches(DEVICE, device_id)
            or not matches(NAME, target)
            or not isinstance(tags, list)
            or len(tags) > 50
            or not all(matches(r"[A-Za-z0-9._:=-]{1,100}", t) for t in tags)
        ):
            raise InputError("a device is {device_id, target, tags: [...]} with ids of [A-Za-z0-9._:-]")
        with engine.begin() as conn:
            out = register_device(conn, device_id, target, tags)
        ingestor.forget_device(device_id)
        return out

    @api.post(
        "/v1/telemetry",
        status_code=201,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def telemetry(request: Request, who: Annotated[tuple, Depends(caller)]) -> dict:
        raw = await request.body()
        if len(raw) > tele["max_summary_bytes"]:
            metrics.telemetry.labels("rejected").inc()
            raise HTTPException(413, f"summary larger than {tele['max_summary_bytes']} bytes")
        try:
            summary = json.loads(raw)
        except ValueError:
            metrics.telemetry.labels("rejected").inc()
            raise HTTPException(422, "body is not JSON") from None
        try:
            result = (await run_in_threadpool(ingestor.ingest, [summary], single=True))[0]
        except InputError:
            metrics.telemetry.labels("rejected").inc()
            raise
        metrics.telemetry.labels("accepted").inc()
        return result

    @api.post(
        "/v1/telemetry/batch",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def telemetry_batch(request: Request, who: Annotated[tuple, Depends(caller)]) -> dict:
        raw = await request.body()
        if len(raw) > tele["max_summary_bytes"] * 1000:
            raise HTTPException(413, "batch too large; send at most 1000 summaries at a time")
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPException(422, "body is not JSON") from None
        items = body.get("summaries") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 0 < len(items) <= 1000:
            raise HTTPException(422, 'send {"summaries": [...]} with 1 to 1000 summaries')
        results = await run_in_threadpool(ingestor.ingest, items)
        for r in results:
            metrics.telemetry.labels(r["status"]).inc()
        return {"results": results, "accepted": sum(r["status"] == "accepted" for r in results)}

    @api.post("/v1/evaluate")
    def evaluate_now(actor: Annotated[str, Depends(admin)]) -> dict:
        return evaluate()

    return api, evaluate
