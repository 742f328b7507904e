"""Fleet health from the registry's database: telemetry rows per window, judged by :mod:`factory.monitor`.

The registry owns the rows (telemetry summaries, rollouts, releases); the monitor owns the rules.
:func:`evaluate_rollouts` reads each active rollout's stage, asks :func:`factory.monitor.health.decide`
and applies what it says (advance or roll back) with the evidence in the audit log.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from datetime import datetime

import sqlalchemy as sa

from ..device.telemetry import SCHEMA
from ..monitor.health import DEVICE_WEIGHT_CAP, decide, judge_window, window_figures
from ..monitor.summaries import by_device, cap_weights, combine
from . import db
from . import rollouts as ro

__all__ = ["release_reference", "series_for", "stage_series", "stage_verdicts", "evaluate_rollouts"]


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


class _Cache:
    """Judged windows by content: (release, scope, window, fingerprint, previous fingerprint, rules) -> result.

    A window's fingerprint is the count and highest id of its rows, so a window is read and judged
    again only when a summary for it arrives; a health report over many windows costs the new
    windows, not the whole history. Bounded (least recently used out); one per process.
    """

    def __init__(self, maxsize: int = 200_000):
        self.maxsize, self._data, self._lock = maxsize, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


_CACHE = _Cache()


def _where(key: str, stage: tuple[str, int] | None, since: float | None, window_seconds: int) -> list:
    where = [db.telemetry.c.release_key == key]
    if stage is not None:
        where += [db.telemetry.c.rollout == stage[0], db.telemetry.c.stage == stage[1]]
    if since is not None:
        where.append(db.telemetry.c.window_start >= since - window_seconds)
    return where


def _fingerprints(conn, where: list, window_seconds: int) -> dict[float, tuple[int, int]]:
    rows = conn.execute(
        sa.select(db.telemetry.c.window_start, sa.func.count(db.telemetry.c.id), sa.func.max(db.telemetry.c.id))
        .where(*where)
        .group_by(db.telemetry.c.window_start)
    ).all()
    out: dict[float, tuple[int, int]] = {}
    for start, n, top in rows:
        w = start - start % window_seconds
        have = out.get(w, (0, 0))
        out[w] = (have[0] + n, max(have[1], top))
    return out


def _devices(conn, where: list, window: float, window_seconds: int) -> dict[str, dict]:
    rows = conn.execute(
        sa.select(db.telemetry.c.summary).where(
            *where, db.telemetry.c.window_start >= window, db.telemetry.c.window_start < window + window_seconds
        )
    ).all()
    summaries = [json.loads(r.summary) for r in rows]
    return by_device([s for s in summaries if s.get("schema") == SCHEMA])  # rows of an older layout do not add up


def series_for(
    conn,
    key: str,
    window_seconds: int,
    *,
    since: float | None = None,
    stage: tuple[str, int] | None = None,
    rules: dict | None = None,
    prev: dict[float, tuple] | None = None,
) -> dict[float, tuple]:
    """Judged windows of one release: window start -> (figures, verdict or None, fingerprint).

    With ``stage=(rollout, index)``: only the summaries the registry attributed to that stage when it
    received them, so a stage is never judged on windows its predecessor already used, whatever the
    devices' clocks say. With ``since``: windows from then on (one window of slack). ``prev`` is the
    previous release's series (its p95 is the latency yardstick of the same window).
    """
    where = _where(key, stage, since, window_seconds)
    ref = None
    rules_id = json.dumps(rules, sort_keys=True) if rules else None
    out = {}
    for w, fp in sorted(_fingerprints(conn, where, window_seconds).items()):
        p = (prev or {}).get(w)
        ck = (str(conn.engine.url), key, stage, w, fp, p[2] if p else None, rules_id)
        hit = _CACHE.get(ck)
        if hit is None:
            ref = ref if ref is not None else release_reference(conn, key)
            devices = _devices(conn, where, w, window_seconds)
            if rules:
                fig, verdict = judge_window(devices, ref, p[0] if p else None, rules)
            else:
                capped = cap_weights(devices, DEVICE_WEIGHT_CAP)
                fig, verdict = window_figures(combine(capped), ref, capped), None
            hit = (fig, verdict)
            _CACHE.put(ck, hit)
        out[w] = (hit[0], hit[1], fp)
    return out


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def stage_series(conn, r: dict, target: str, stage_index: int, window_seconds: int) -> dict[float, tuple]:
    """Judged windows of one target in one stage of rollout ``r`` (summaries attributed to that stage),
    each against the previous release's devices of the same window: what the decisions saw."""
    key, stage = r["releases"][target], (r["name"], stage_index)
    first = min(_fingerprints(conn, _where(key, stage, None, window_seconds), window_seconds), default=None)
    if first is None:
        return {}
    prev_key = r["previous"].get(target)
    prev = series_for(conn, prev_key, window_seconds, since=first) if prev_key else {}
    return series_for(conn, key, window_seconds, stage=stage, rules=r["plan"]["health"], prev=prev)


def stage_verdicts(conn, r: dict, window_seconds: int) -> list[tuple]:
    """``(window_start, target, figures, verdict)`` for every window the rollout's current stage owns."""
    return [
        (w, target, fig, verdict)
        for target in r["releases"]
        for w, (fig, verdict, _) in stage_series(conn, r, target, r["stage"], window_seconds).items()
    ]


def _evaluate_one(engine, name: str, window_seconds: int, now: float, actor: str) -> dict | None:
    with engine.begin() as conn:
        r = ro.get(conn, name)
        if r["status"] != "active":
            return None
        verdicts = stage_verdicts(conn, r, window_seconds)
        elapsed_min = (now - _epoch(r["stage_started_at"])) / 60
        d = decide(verdicts, r["plan"]["health"], r["plan"]["stages"][r["stage"]], r["stage"] + 1, elapsed_min)
        if d is None:
            return None
        ro.transition(conn, name, d["action"], actor, d["reason"], evidence=d["evidence"])
    if d["action"] == "rollback":
        return {"rollout": name, "action": "rollback", "evidence": d["evidence"]["windows"]}
    return {"rollout": name, "action": d["action"], "stage": r["stage"] + 1}


def evaluate_rollouts(engine, window_seconds: int, now: float, actor: str = "monitor") -> list[dict]:
    """Judge every active rollout's current stage; advance or roll back where the rules say so.

    Each rollout is judged in its own transaction: one that cannot be judged (a broken plan stored by
    an older version, a database hiccup) is reported and skipped, and never stops the others.
    """
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.rollouts.c.name).where(db.rollouts.c.status == "active")).all()
    active = [n for (n,) in rows]
    decisions = []
    for name in active:
        try:
            d = _evaluate_one(engine, name, window_seconds, now, actor)
        except Exception as exc:  # noqa: BLE001 - isolate: log it, say it, go on with the next rollout
            logging.getLogger("factory.registry").exception("cannot evaluate rollout %s", name)
            d = {"rollout": name, "action": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if d is not None:
            decisions.append(d)
    return decisions
