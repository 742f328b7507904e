"""``/v1/devices``, ``/v1/telemetry`` (single and batch) and ``/v1/evaluate``: devices report, the monitor judges."""

import threading
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from ...errors import InputError
from ..auth import Identity, enroll_device
from ..captures import purge_expired
from ..health import evaluate_rollouts
from ..history import purge_history, roll_up
from ..ingest import Ingestor, register_device
from ..lease import Lease
from ..limits import parse_json
from ..monitoring import check_retraining
from ..rollouts import RolloutConflict
from ..services import DEVICE, NAME, Services, matches, require_device
from ..sweep import sweep_orphans

__all__ = ["router"]

SWEEP_SECONDS = 600.0  # how often the evaluator looks for orphaned blobs


def router(svc: Services, metrics) -> tuple[APIRouter, object]:
    """Routes for devices and telemetry; also returns ``evaluate()`` for the background evaluator."""
    api = APIRouter()
    auth = svc.auth()
    engine, tele = svc.engine, svc.settings["telemetry"]
    ingestor = Ingestor(engine, tele["max_summary_bytes"], tele["max_inferences_per_second"])
    lock = threading.Lock()
    period = tele["evaluate_seconds"]
    # Replicas share one evaluator: whoever holds the lease (renewed at every run) evaluates; a dead holder's
    # lease expires after three periods and another replica takes over. Transitions compare and set in SQL.
    lease = Lease(engine, "rollout-evaluator", 3 * period if period > 0 else 30.0)

    def evaluate(background: bool = False) -> dict:
        with lock:  # one evaluation at a time per process, and one at a time across replicas (the lease)
            if not lease.acquire():
                held = lease.current() or {}
                if background:
                    return {"skipped": "another replica holds the evaluator lease", "lease": held}
                wait = max(1, round(held.get("until", 0) - time.time()))
                raise RolloutConflict(
                    f"replica {held.get('holder')} evaluates rollouts (its lease runs {wait} s more); its next "
                    "evaluation is due within telemetry.evaluate_seconds, or retry after the lease"
                )
            try:
                result = _evaluate()
            finally:
                if period <= 0:  # evaluations only on request: the lease only keeps two from overlapping
                    lease.release()
        svc.states.invalidate()
        return result

    swept = {"at": 0.0}

    def _evaluate() -> dict:
        now = time.time()
        decisions = evaluate_rollouts(engine, tele["window_seconds"], now)
        with engine.begin() as conn:
            purge_expired(conn, svc.store, now)  # captures past their plan's retention
        if now - swept["at"] > SWEEP_SECONDS:  # blobs a crash left without their row
            sweep_orphans(engine, svc.store, now)
            swept["at"] = now
        roll_up(engine, tele["window_seconds"], now)  # complete windows into the history
        purge_history(engine, now, tele["history_days"], tele["raw_days"], tele["window_seconds"])
        triggers = check_retraining(
            engine,
            tele["window_seconds"],
            now,
            windows=tele.get("retrain_windows", 3),
            max_psi=tele.get("retrain_max_psi", 0.25),
            max_js=tele.get("retrain_max_js", 0.1),
        )
        return {"decisions": decisions, "triggers": triggers, "evaluator": lease.holder}

    evaluate.lease = lease

    def _device(body: dict) -> tuple[str, str, list]:
        device_id, target, tags = body.get("device_id"), body.get("target"), body.get("tags", [])
        if (
            not matches(DEVICE, device_id)
            or not matches(NAME, target)
            or not isinstance(tags, list)
            or len(tags) > 50
            or not all(matches(r"[A-Za-z0-9._:=-]{1,100}", t) for t in tags)
        ):
            raise InputError("a device is {device_id, target, tags: [...]} with ids of [A-Za-z0-9._:-]")
        return device_id, target, tags

    @api.post("/v1/devices/enroll", status_code=201)
    def enroll(who: Annotated[Identity, Depends(auth.enroller)], body: Annotated[dict, Body()]) -> dict:
        """Register a device and return its own token (bound to its id; shown once)."""
        device_id, target, tags = _device(body)
        with engine.begin() as conn:
            token = enroll_device(conn, who, device_id, target, tags)
        svc.tokens.invalidate()
        ingestor.forget_device(device_id)
        return {"device_id": device_id, "target": target, "tags": sorted(tags), "token": token}

    @api.post("/v1/devices", status_code=201)
    def register(who: Annotated[Identity, Depends(auth.caller)], body: Annotated[dict, Body()]) -> dict:
        device_id, target, tags = _device(body)
        require_device(who, device_id)
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
    async def telemetry(request: Request, who: Annotated[Identity, Depends(auth.caller)]) -> dict:
        raw = await request.body()  # bounded while read (see factory.registry.limits)
        if len(raw) > tele["max_summary_bytes"]:
            metrics.telemetry.labels("rejected").inc()
            raise HTTPException(413, f"summary larger than {tele['max_summary_bytes']} bytes")
        try:
            summary = parse_json(raw, "the summary")
        except InputError:
            metrics.telemetry.labels("rejected").inc()
            raise
        if isinstance(summary, dict) and not who.speaks_for(summary.get("device_id")):
            metrics.telemetry.labels("rejected").inc()
            require_device(who, summary.get("device_id"))
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
    async def telemetry_batch(request: Request, who: Annotated[Identity, Depends(auth.caller)]) -> dict:
        body = parse_json(await request.body(), "the batch")  # bounded while read by telemetry.max_batch_bytes
        items = body.get("summaries") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 0 < len(items) <= 1000:
            raise HTTPException(422, 'send {"summaries": [...]} with 1 to 1000 summaries')
        results = await run_in_threadpool(ingestor.ingest, items, speaker=who)
        for r in results:
            metrics.telemetry.labels(r["status"]).inc()
        return {"results": results, "accepted": sum(r["status"] == "accepted" for r in results)}

    @api.post("/v1/evaluate")
    def evaluate_now(who: Annotated[Identity, Depends(auth.admin)]) -> dict:
        return evaluate()

    return api, evaluate
