"""``/healthz``, ``/v1/health``, ``/metrics`` and ``/status``: the registry's own health and the fleet's."""

import logging
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from ... import __version__
from .. import db
from ..auth import Identity
from ..monitoring import health_report
from ..services import Services
from ..status_page import live

__all__ = ["router", "start_evaluator"]


def router(svc: Services, metrics) -> APIRouter:
    """Routes for liveness, the health report, Prometheus metrics and the status page."""
    api = APIRouter()
    engine, tele = svc.engine, svc.settings["telemetry"]
    auth = svc.auth()
    page = live()

    @api.get("/healthz")
    def healthz() -> dict:
        with engine.connect() as conn:
            return {"status": "ok", "version": __version__, "state_version": db.state_version(conn)}

    cache = {"at": float("-inf"), "report": None}
    lock = threading.Lock()

    def report() -> dict:
        """The health report, computed by one request at a time and shared for a second: a burst of
        dashboard or scraper requests costs one computation, whatever the history."""
        with lock:
            if time.monotonic() - cache["at"] > 1.0:
                cache["report"] = health_report(engine, tele["window_seconds"])
                cache["at"] = time.monotonic()
                metrics.update(cache["report"])
            return cache["report"]

    @api.get("/v1/health")
    def health(who: Annotated[Identity, Depends(auth.reader)]) -> dict:
        return report()

    @api.get("/metrics")
    def prometheus(who: Annotated[Identity, Depends(auth.reader)]) -> Response:
        report()
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/status", response_class=HTMLResponse)
    def status_page() -> str:
        return page

    return api


def start_evaluator(svc: Services, evaluate) -> None:
    """Evaluate rollout health every ``telemetry.evaluate_seconds`` in a daemon thread (0: only on request)."""
    seconds = svc.settings["telemetry"]["evaluate_seconds"]
    if seconds <= 0:
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                evaluate(background=True)
            except Exception:  # keep evaluating; a transient database error must not kill the loop
                logging.getLogger("factory.registry").exception("health evaluation failed")

    svc.hooks["start"].append(lambda: threading.Thread(target=loop, name="health-evaluator", daemon=True).start())
    svc.hooks["stop"].append(stop.set)
    svc.hooks["stop"].append(evaluate.lease.release)  # a clean stop hands over at once, not after the lease
