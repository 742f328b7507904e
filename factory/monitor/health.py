"""Release health from merged telemetry, and the rules that advance or halt a rollout.

Per window, the new release's devices are compared with:
- the bundle's reference profile (drift: PSI of confidence, brightness and contrast histograms,
  JS of the predicted-class mix);
- the previous release's devices in the same window (latency p95 ratio: both measured on devices);
- the error rate.
A window is judged only when it holds ``min_inferences``. ``windows_to_halt`` consecutive unhealthy
windows roll the stage back (with the evidence in the audit log); a stage that has run its minimum
duration with enough devices reporting and a healthy last window advances.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa

from ..device.telemetry import HISTOGRAMS, merge, percentile_from_hist
from ..registry import db
from .drift import js_divergence, psi

__all__ = ["window_figures", "judge", "evaluate_rollouts", "release_reference", "series_for"]


def release_reference(conn, key: str) -> dict:
    name, version, target = key.split("/")
    r = conn.execute(sa.select(db.releases.c.manifest).where(db.releases.c.name == name, db.releases.c.version == version,
                                                             db.releases.c.target == target)).first()
    if r is None:
        return {}
    m = json.loads(r.manifest)
    return {"profile": m.get("reference_profile") or {}, "latency": m.get("latency") or {}, "lineage": m.get("lineage") or {},
            "labels": m.get("labels") or []}


def window_figures(merged: dict, reference: dict) -> dict:
    prof = reference.get("profile", {})
    ok = merged["count"] - merged["errors"]
    fig = {"count": int(merged["count"]), "errors": int(merged["errors"]), "devices": merged["devices"],
           "error_rate": merged["errors"] / merged["count"] if merged["count"] else None,
           "p50_ms": percentile_from_hist(merged["latency_ms"], HISTOGRAMS["latency_ms"], 50) if ok else None,
           "p95_ms": percentile_from_hist(merged["latency_ms"], HISTOGRAMS["latency_ms"], 95) if ok else None}
    drift = {}
    for sig in ("confidence", "brightness", "contrast"):
        if sig in prof:
            drift[f"psi_{sig}"] = psi(prof[sig]["counts"], merged[sig])
    if "predicted_class" in prof:
        ref = prof["predicted_class"]["counts"]
        drift["psi_class"] = psi(ref, list(merged["predicted_class"]) + [0] * max(0, len(ref) - len(merged["predicted_class"])))
        drift["js_class"] = js_divergence(ref, merged["predicted_class"])
    fig["drift"] = drift
    return fig


def judge(fig: dict, prev: dict | None, rules: dict) -> dict:
    """Every rule measured, then the verdict: {"healthy": bool|None, "violations": [...]} (None: too few)."""
    if fig["count"] < rules["min_inferences"]:
        return {"healthy": None, "violations": [], "why": f"{fig['count']} inferences < {rules['min_inferences']}"}
    v = []
    if fig["error_rate"] is not None and fig["error_rate"] > rules["max_error_rate"]:
        v.append(f"error rate {fig['error_rate']:.3f} > {rules['max_error_rate']}")
    if prev and prev.get("p95_ms") and fig.get("p95_ms"):
        ratio = fig["p95_ms"] / prev["p95_ms"]
        fig["latency_p95_ratio"] = ratio
        if ratio > rules["max_latency_p95_ratio"]:
            v.append(f"p95 {fig['p95_ms']:.2f} ms is {ratio:.2f}x the previous release's {prev['p95_ms']:.2f} ms (> {rules['max_latency_p95_ratio']})")
    for k, val in fig["drift"].items():
        if val is None:
            continue
        limit = rules["max_js"] if k.startswith("js") else rules["max_psi"]
        if val > limit:
            v.append(f"{k} {val:.3f} > {limit}")
    return {"healthy": not v, "violations": v}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def series_for(conn, key: str, since: float, window_seconds: int, stage: tuple[str, int] | None = None) -> dict[float, dict]:
    """Merged telemetry of one release per window (window start -> merged).

    With ``stage=(rollout, index)``: only the summaries the registry attributed to that stage when
    it received them, so a stage is never judged on windows its predecessor already used, whatever
    the devices' clocks say. Without it: windows that start from ``since`` (one window of slack).
    """
    where = [db.telemetry.c.release_key == key]
    if stage is not None:
        where += [db.telemetry.c.rollout == stage[0], db.telemetry.c.stage == stage[1]]
    else:
        where.append(db.telemetry.c.window_start >= since - window_seconds)
    rows = conn.execute(sa.select(db.telemetry.c.window_start, db.telemetry.c.summary).where(*where)).all()
    groups: dict[float, list] = defaultdict(list)
    for r in rows:
        groups[r.window_start - r.window_start % window_seconds].append(json.loads(r.summary))
    return {w: merge(s) for w, s in sorted(groups.items())}


def evaluate_rollouts(engine, window_seconds: int, now: float, actor: str = "monitor") -> list[dict]:
    """Judge every active rollout's current stage; advance or roll back where the rules say so."""
    from ..registry import rollouts as ro

    decisions = []
    with engine.begin() as conn:
        active = conn.execute(sa.select(db.rollouts.c.name).where(db.rollouts.c.status == "active")).all()
        for (name,) in active:
            r = ro.get(conn, name)
            rules, stage = r["plan"]["health"], r["plan"]["stages"][r["stage"]]
            started = _epoch(r["stage_started_at"])
            verdicts = []
            for target, key in r["releases"].items():
                ref = release_reference(conn, key)
                new = series_for(conn, key, started, window_seconds, stage=(name, r["stage"]))
                prev_key = r["previous"].get(target)
                prev = series_for(conn, prev_key, min(new, default=started), window_seconds) if prev_key else {}
                for w, merged in new.items():
                    fig = window_figures(merged, ref)
                    pf = window_figures(prev[w], release_reference(conn, prev_key)) if w in prev else None
                    verdicts.append((w, target, fig, judge(fig, pf, rules)))
            verdicts.sort(key=lambda x: x[0])
            judged = [v for v in verdicts if v[3]["healthy"] is not None]
            streak = []
            for v in reversed(judged):
                if v[3]["healthy"]:
                    break
                streak.append(v)
            devices = sum(v[2]["devices"] for v in verdicts if v[0] == (verdicts[-1][0] if verdicts else None))
            evidence = [{"window_start": v[0], "target": v[1], "violations": v[3]["violations"],
                         "figures": {k: v[2][k] for k in ("count", "errors", "error_rate", "p95_ms", "devices")} | v[2]["drift"]
                         | ({"latency_p95_ratio": v[2]["latency_p95_ratio"]} if "latency_p95_ratio" in v[2] else {})}
                        for v in reversed(streak)]
            unhealthy_windows = len({v[0] for v in streak})
            if unhealthy_windows >= rules["windows_to_halt"] and rules["auto_rollback"]:
                ro.transition(conn, name, "rollback", actor, f"{unhealthy_windows} consecutive unhealthy windows in stage {r['stage'] + 1}",
                              evidence={"windows": evidence})
                decisions.append({"rollout": name, "action": "rollback", "evidence": evidence})
                continue
            elapsed_min = (now - started) / 60
            healthy_last = bool(judged) and judged[-1][3]["healthy"]
            if (rules["auto_advance"] and healthy_last and not streak and elapsed_min >= stage["min_duration_minutes"]
                    and devices >= stage["min_devices_reporting"]):
                last = judged[-1]
                ro.transition(conn, name, "advance", actor, f"stage {r['stage'] + 1} healthy for {elapsed_min:.1f} min with {devices} devices",
                              evidence={"window_start": last[0], "figures": {k: last[2][k] for k in ("count", "error_rate", "p95_ms")} | last[2]["drift"]})
                decisions.append({"rollout": name, "action": "advance", "stage": r["stage"] + 1})
    return decisions
