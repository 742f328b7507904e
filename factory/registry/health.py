"""Fleet health from the registry's database: telemetry rows per window, judged by :mod:`factory.monitor`.

The registry owns the rows (telemetry summaries, rollouts, releases); the monitor owns the rules.
:func:`evaluate_rollouts` reads each active rollout's stage, asks :func:`factory.monitor.health.decide`
and applies what it says (advance or roll back) with the evidence in the audit log.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa

from ..monitor.health import decide, judge, window_figures
from ..monitor.summaries import merge
from . import db
from . import rollouts as ro

__all__ = ["release_reference", "series_for", "stage_verdicts", "evaluate_rollouts"]


def release_reference(conn, key: str) -> dict:
    """What a release's manifest says drift and latency are judged against."""
    name, version, target = key.split("/")
    r = conn.execute(
        sa.select(db.releases.c.manifest).where(
            db.releases.c.name == name, db.releases.c.version == version, db.releases.c.target == target
        )
    ).first()
    if r is None:
        return {}
    m = json.loads(r.manifest)
    return {
        "profile": m.get("reference_profile") or {},
        "latency": m.get("latency") or {},
        "lineage": m.get("lineage") or {},
        "labels": m.get("labels") or [],
    }


def series_for(
    conn, key: str, since: float, window_seconds: int, stage: tuple[str, int] | None = None
) -> dict[float, dict]:
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


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def stage_verdicts(conn, r: dict, window_seconds: int) -> list[tuple]:
    """``(window_start, target, figures, verdict)`` for every window the rollout's current stage owns."""
    rules, started = r["plan"]["health"], _epoch(r["stage_started_at"])
    verdicts = []
    for target, key in r["releases"].items():
        ref = release_reference(conn, key)
        new = series_for(conn, key, started, window_seconds, stage=(r["name"], r["stage"]))
        prev_key = r["previous"].get(target)
        prev = series_for(conn, prev_key, min(new, default=started), window_seconds) if prev_key else {}
        prev_ref = release_reference(conn, prev_key) if prev_key else {}
        for w, merged in new.items():
            fig = window_figures(merged, ref)
            pf = window_figures(prev[w], prev_ref) if w in prev else None
            verdicts.append((w, target, fig, judge(fig, pf, rules)))
    return verdicts


def evaluate_rollouts(engine, window_seconds: int, now: float, actor: str = "monitor") -> list[dict]:
    """Judge every active rollout's current stage; advance or roll back where the rules say so."""
    decisions = []
    with engine.begin() as conn:
        active = conn.execute(sa.select(db.rollouts.c.name).where(db.rollouts.c.status == "active")).all()
        for (name,) in active:
            r = ro.get(conn, name)
            verdicts = stage_verdicts(conn, r, window_seconds)
            elapsed_min = (now - _epoch(r["stage_started_at"])) / 60
            d = decide(verdicts, r["plan"]["health"], r["plan"]["stages"][r["stage"]], r["stage"] + 1, elapsed_min)
            if d is None:
                continue
            ro.transition(conn, name, d["action"], actor, d["reason"], evidence=d["evidence"])
            decisions.append(
                {"rollout": name, "action": d["action"]}
                | ({"evidence": d["evidence"]["windows"]} if d["action"] == "rollback" else {"stage": r["stage"] + 1})
            )
    return decisions
