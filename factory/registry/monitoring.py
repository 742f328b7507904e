"""Fleet health for people and machines: a JSON report, Prometheus metrics, retraining triggers.

The report holds, per active or recent rollout, the figures of every telemetry window of its new
release (count, error rate, p50/p95 latency against the previous release, drift against the
reference profile) and, per stable release, its drift trend. Sustained drift on a fully rolled-out
release raises a retraining trigger naming the data and model lineage to start the next loop from.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from . import db
from . import rollouts as ro
from .health import release_reference, series_for, stage_series

__all__ = ["health_report", "check_retraining", "Metrics"]


def _series(conn, key: str, since: float, window_seconds: int, rules: dict | None) -> list[dict]:
    """A stable release's windows by time (drift against its reference; no previous release)."""
    ref = release_reference(conn, key)
    out = []
    for w, (fig, verdict, _) in series_for(conn, key, window_seconds, since=since, rules=rules).items():
        fig = dict(fig)
        if rules:
            fig["verdict"] = verdict
        fig["window_start"] = w
        fig["manifest_p95_ms"] = (ref.get("latency") or {}).get("p95_ms")
        out.append(fig)
    return out


def _rollout_entry(conn, name: str, since: float, window_seconds: int) -> dict:
    """A rollout's windows per target, stage by stage, judged exactly as its decisions were: on the
    summaries attributed to each stage, against the previous release's devices of the same window."""
    r = ro.get(conn, name)
    entry = {
        "name": r["name"],
        "status": r["status"],
        "stage": r["stage"],
        "percent": r["plan"]["stages"][r["stage"]]["percent"],
        "stages": len(r["plan"]["stages"]),
        "updated_at": r["updated_at"],
        "targets": {},
    }
    for target, key in r["releases"].items():
        manifest_p95 = (release_reference(conn, key).get("latency") or {}).get("p95_ms")
        windows = []
        for i in range(r["stage"] + 1):
            for w, (fig, verdict, _) in stage_series(conn, r, target, i, window_seconds).items():
                if w >= since - window_seconds:
                    windows.append(
                        dict(fig)
                        | {"verdict": verdict, "window_start": w, "stage": i + 1, "manifest_p95_ms": manifest_p95}
                    )
        entry["targets"][target] = {
            "release": key,
            "previous": r["previous"].get(target),
            "windows": windows,
            "limits": {k: (r["plan"].get("health") or {}).get(k, d) for k, d in (("max_psi", 0.25), ("max_js", 0.1))},
        }
    return entry


def health_report(engine, window_seconds: int, now: float | None = None, history_windows: int = 30) -> dict:
    """Recent rollouts and stable releases with their windows' figures and verdicts; retraining triggers."""
    now = time.time() if now is None else now
    since = now - history_windows * window_seconds
    report = {"generated_at": db.now(), "window_seconds": window_seconds, "rollouts": [], "stable": [], "triggers": []}
    with engine.connect() as conn:
        for r in conn.execute(sa.select(db.rollouts).order_by(db.rollouts.c.id.desc()).limit(20)).all():
            try:
                report["rollouts"].append(_rollout_entry(conn, r.name, since, window_seconds))
            except Exception as exc:  # noqa: BLE001 - one unreadable rollout must not hide the others
                report["rollouts"].append(
                    {
                        "name": r.name,
                        "status": r.status,
                        "stage": r.stage,
                        "targets": {},
                        "error": f"cannot report this rollout: {type(exc).__name__}: {exc}"[:300],
                    }
                )
        for s in conn.execute(sa.select(db.stable)).all():
            report["stable"].append(
                {
                    "model": s.model,
                    "target": s.target,
                    "release": s.release_key,
                    "windows": _series(conn, s.release_key, since, window_seconds, None),
                }
            )
        for a in conn.execute(
            sa.select(db.audit).where(db.audit.c.action == "retrain.trigger").order_by(db.audit.c.id.desc()).limit(20)
        ).all():
            report["triggers"].append({"ts": a.ts, "detail": json.loads(a.detail)})
    return report


def check_retraining(
    engine,
    window_seconds: int,
    now: float,
    *,
    windows: int = 3,
    max_psi: float = 0.25,
    max_js: float = 0.1,
    min_inferences: int = 50,
) -> list[dict]:
    """Sustained drift on a stable (fully rolled-out) release: ``windows`` judged windows in a row."""
    rules = {
        "min_inferences": min_inferences,
        "max_error_rate": 1.0,
        "max_latency_p95_ratio": float("inf"),
        "max_psi": max_psi,
        "max_js": max_js,
    }
    triggers = []
    with engine.begin() as conn:
        for s in conn.execute(sa.select(db.stable)).all():
            series = _series(conn, s.release_key, now - (windows + 2) * window_seconds, window_seconds, rules)
            judged = [f for f in series if f["verdict"]["healthy"] is not None][-windows:]
            if len(judged) < windows or any(f["verdict"]["healthy"] for f in judged):
                continue
            recent = conn.execute(
                sa.select(db.audit.c.detail)
                .where(db.audit.c.action == "retrain.trigger")
                .order_by(db.audit.c.id.desc())
                .limit(50)
            ).all()
            if any(json.loads(d.detail).get("release") == s.release_key for d in recent):
                continue  # raised once per release; the next model resets it
            ref = release_reference(conn, s.release_key)
            lineage = ref.get("lineage", {})
            detail = {
                "release": s.release_key,
                "reason": f"drift in {windows} consecutive windows",
                "evidence": [
                    {"window_start": f["window_start"], "violations": f["verdict"]["violations"]} for f in judged
                ],
                "start_from": {
                    "dataset_hash": lineage.get("training", {}).get("dataset_hash"),
                    "dataset": lineage.get("training", {}).get("dataset"),
                    "config_hash": lineage.get("training", {}).get("config_hash"),
                    "training_run": (lineage.get("training", {}).get("mlflow") or {}).get("run_id"),
                    "canonical_weights_sha256": lineage.get("canonical", {}).get("weights_sha256"),
                },
                "next": (
                    "collect data like what devices now see, then: factory data import ... && factory train && "
                    "factory build"
                ),
            }
            db.add_audit(conn, "monitor", "retrain.trigger", None, detail)
            triggers.append(detail)
    return triggers


class Metrics:
    """Prometheus metrics of one registry process (its own registry, exposed at /metrics)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.requests = Counter("factory_assignment_requests", "assignment requests served", registry=self.registry)
        self.telemetry = Counter(
            "factory_telemetry_summaries", "telemetry summaries by outcome", ["status"], registry=self.registry
        )
        self.inferences = Gauge(
            "factory_release_window_inferences", "inferences in the latest window", ["release"], registry=self.registry
        )
        self.error_rate = Gauge(
            "factory_release_error_rate", "error rate in the latest window", ["release"], registry=self.registry
        )
        self.p95 = Gauge(
            "factory_release_latency_p95_ms",
            "device p95 latency in the latest window",
            ["release"],
            registry=self.registry,
        )
        self.drift = Gauge(
            "factory_release_drift",
            "drift vs the reference profile in the latest window",
            ["release", "signal"],
            registry=self.registry,
        )
        self.stage = Gauge(
            "factory_rollout_stage_percent", "current stage percent", ["rollout", "status"], registry=self.registry
        )

    def update(self, report: dict) -> None:
        self.stage.clear()
        for r in report["rollouts"]:
            if "percent" not in r:  # a rollout the report could not read (its entry says why)
                continue
            self.stage.labels(r["name"], r["status"]).set(r["percent"])
            for t in r["targets"].values():
                self._release(t["release"], t["windows"])
        for s in report["stable"]:
            self._release(s["release"], s["windows"])

    def _release(self, key: str, windows: list[dict]) -> None:
        if not windows:
            return
        w = windows[-1]
        self.inferences.labels(key).set(w["count"])
        if w["error_rate"] is not None:
            self.error_rate.labels(key).set(w["error_rate"])
        if w["p95_ms"] is not None:
            self.p95.labels(key).set(w["p95_ms"])
        for sig, v in w["drift"].items():
            if v is not None:
                self.drift.labels(key, sig).set(v)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
