"""History for the fleet manager's pages: per-window figures kept after the raw summaries, and the
timelines and drill-downs the status pages draw.

:func:`roll_up` stores, for every release and every *complete* telemetry window, the window's merged
figures (inferences, errors, devices, p50/p95, drift per signal) in the ``windows`` table, once; the
history outlives the raw summaries (``telemetry.raw_days``) and is kept ``telemetry.history_days``.
Pages read the rolled-up figures only, downsampled to at most :data:`MAX_POINTS` points per series
(count-weighted means of latency, the largest drift of the merged windows: a spike is never hidden),
so a rollout page costs the same for ten devices or ten thousand, for a day or for a month.
"""

from __future__ import annotations

import json
import math

import sqlalchemy as sa

from . import db
from . import rollouts as ro
from .health import release_reference, series_for

__all__ = [
    "roll_up",
    "close_windows",
    "purge_history",
    "series",
    "rollout_history",
    "release_history",
    "device_history",
    "write_snapshots",
    "MAX_POINTS",
]

MAX_POINTS = 720
HOUR = 3600  # windows are also merged per hour, so a month's chart reads 720 rows, not 43,200
_KEEP = ("count", "errors", "devices", "error_rate", "p50_ms", "p95_ms", "drift")


def roll_up(engine, window_seconds: int, now: float) -> int:
    """Store the figures of every complete window not stored yet (all releases), and refresh the hourly
    merges they fall in; returns how many windows were stored."""
    done = 0
    complete_before = now - 2 * window_seconds  # a window stays open to late summaries for one more window
    base = db.windows.c.resolution == window_seconds
    with engine.begin() as conn:
        keys = [r[0] for r in conn.execute(sa.select(db.telemetry.c.release_key).distinct()).all()]
        for key in keys:
            mine = db.windows.c.release_key == key
            last = conn.execute(sa.select(sa.func.max(db.windows.c.window_start)).where(mine, base)).scalar()
            since = None if last is None else last + window_seconds
            hours = set()
            for w, (fig, _verdict, _fp) in series_for(conn, key, window_seconds, since=since).items():
                if w + window_seconds > complete_before or (last is not None and w <= last):
                    continue
                kept = {k: fig.get(k) for k in _KEEP}
                conn.execute(db.windows.insert().values(release_key=key, resolution=window_seconds, window_start=w,
                                                        figures=db.dumps(kept)))  # fmt: skip
                hours.add(w - w % HOUR)
                done += 1
            if window_seconds < HOUR:
                for h in sorted(hours):
                    rows = conn.execute(
                        sa.select(db.windows.c.window_start, db.windows.c.figures)
                        .where(mine, base, db.windows.c.window_start >= h, db.windows.c.window_start < h + HOUR)
                        .order_by(db.windows.c.window_start)
                    ).all()
                    merged = _merge([(w, json.loads(f)) for w, f in rows])
                    merged["window_start"] = h
                    hourly = (mine, db.windows.c.resolution == HOUR, db.windows.c.window_start == h)
                    conn.execute(db.windows.delete().where(*hourly))
                    conn.execute(db.windows.insert().values(release_key=key, resolution=HOUR, window_start=h,
                                                            figures=db.dumps(merged)))  # fmt: skip
    return done


def purge_history(engine, now: float, history_days: float, raw_days: float, window_seconds: int) -> dict:
    """Drop rolled-up figures older than ``history_days`` and raw summaries older than ``raw_days`` whose
    windows are rolled up."""
    with engine.begin() as conn:
        old = conn.execute(db.windows.delete().where(db.windows.c.window_start < now - history_days * 86400)).rowcount
        cutoff = now - raw_days * 86400
        raw = 0
        for key in [r[0] for r in conn.execute(sa.select(db.telemetry.c.release_key).distinct()).all()]:
            last = conn.execute(
                sa.select(sa.func.max(db.windows.c.window_start)).where(db.windows.c.release_key == key)
            ).scalar()
            if last is None:
                continue
            raw += conn.execute(
                db.telemetry.delete().where(
                    db.telemetry.c.release_key == key,
                    db.telemetry.c.window_start < min(cutoff, last + window_seconds),
                )
            ).rowcount
    return {"windows": old, "summaries": raw}


def _merge(rows: list[tuple[float, dict]]) -> dict:
    """One point from several consecutive windows."""
    count = sum(f.get("count") or 0 for _, f in rows)
    out = {
        "window_start": rows[0][0],
        "windows": sum(f.get("windows", 1) for _, f in rows),
        "count": count,
        "errors": sum(f.get("errors") or 0 for _, f in rows),
        "devices": max((f.get("devices") or 0) for _, f in rows),
    }
    out["error_rate"] = out["errors"] / count if count else None
    for k in ("p50_ms", "p95_ms"):
        pts = [(f[k], f.get("count") or 0) for _, f in rows if f.get(k) is not None]
        weight = sum(c for _, c in pts)
        out[k] = sum(v * c for v, c in pts) / weight if weight else None
    signals = {s for _, f in rows for s in (f.get("drift") or {})}
    out["drift"] = {
        s: max((f["drift"][s] for _, f in rows if (f.get("drift") or {}).get(s) is not None), default=None)
        for s in sorted(signals)
    }
    return out


def series(conn, key: str | None, since: float | None = None, until: float | None = None) -> list[dict]:
    """A release's rolled-up windows between ``since`` and ``until``, at most :data:`MAX_POINTS` points
    (from the hourly merges when the finest windows would be more than that)."""
    if not key:
        return []
    where = [db.windows.c.release_key == key]
    if since is not None:
        where.append(db.windows.c.window_start >= since)
    if until is not None:
        where.append(db.windows.c.window_start <= until)
    counts = dict(
        conn.execute(
            sa.select(db.windows.c.resolution, sa.func.count()).where(*where).group_by(db.windows.c.resolution)
        ).all()
    )
    if not counts:
        return []
    fine = min(counts)
    resolution = HOUR if counts[fine] > MAX_POINTS and HOUR in counts else fine
    q = sa.select(db.windows.c.window_start, db.windows.c.figures).where(*where, db.windows.c.resolution == resolution)
    rows = [(w, json.loads(f)) for w, f in conn.execute(q.order_by(db.windows.c.window_start)).all()]
    step = max(1, math.ceil(len(rows) / MAX_POINTS))
    return [_merge(rows[i : i + step]) for i in range(0, len(rows), step)]


def _timeline(conn, name: str) -> list[dict]:
    """Every audit entry of a rollout, oldest first: who or which rule, when, what, and its evidence."""
    return db.audit_entries(conn, name, 1000)


def rollout_history(conn, name: str, window_seconds: int) -> dict:
    """A rollout's life: its stages as they happened (with the audit log's evidence beside each decision)
    and, per target, the new and the previous release's figures over the rollout's whole life."""
    r = ro.get(conn, name)
    timeline = _timeline(conn, name)
    health = r["plan"].get("health") or {}
    targets = {}
    for target, key in r["releases"].items():
        prev = r["previous"].get(target)
        new = series(conn, key)  # the release's windows (device clocks, not the registry's, date them)
        span = (new[0]["window_start"] - window_seconds, new[-1]["window_start"] + window_seconds) if new else (0, 0)
        targets[target] = {
            "release": key,
            "previous": prev,
            "manifest_p95_ms": (release_reference(conn, key).get("latency") or {}).get("p95_ms"),
            "series": new,
            "previous_series": series(conn, prev, *span) if new else [],
        }
    return {
        "name": r["name"],
        "model": r["model"],
        "status": r["status"],
        "stage": r["stage"],
        "stages": r["plan"]["stages"],
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
        "limits": {
            "max_psi": health.get("max_psi", 0.25),
            "max_js": health.get("max_js", 0.1),
            "max_error_rate": health.get("max_error_rate", 0.02),
            "max_latency_p95_ratio": health.get("max_latency_p95_ratio", 1.2),
        },
        "timeline": timeline,
        "targets": targets,
    }


def release_history(conn, name: str, version: str, target: str) -> dict:
    """A release's page: what its bundle manifest says (recipe, parity, latency at build, lineage) and its
    figures over the kept history, with every rollout that moved it and their decisions."""
    from .releases import get_release

    row = get_release(conn, name, version, target)
    m = json.loads(row.manifest)
    key = f"{name}/{version}/{target}"
    rollouts = []
    for r in ro.list_all(conn):
        if key in r["releases"].values() or key in r["previous"].values():
            decisions = [
                a for a in db.audit_entries(conn, r["name"], 200)
                if a["action"] in ("rollout.rollback", "rollout.halt", "rollout.advance")
            ]  # fmt: skip
            rollouts.append({"name": r["name"], "status": r["status"], "new": key in r["releases"].values(),
                             "decisions": decisions})  # fmt: skip
    validation = m.get("validation") or {}
    pipeline = m.get("pipeline") if isinstance(m.get("pipeline"), dict) else None
    stages = [
        {k: s.get(k) for k in ("stage", "name", "version", "target", "task", "backend", "precision", "manifest_sha256")}
        for s in (pipeline or {}).get("stages", [])
        if isinstance(s, dict)
    ]
    e2e = validation.get("end_to_end") if isinstance(validation.get("end_to_end"), dict) else {}
    return {
        "key": key,
        "stages": stages,  # a pipeline release's members (empty for a bundle of one model)
        "end_to_end": {k: v for k, v in e2e.items() if not k.startswith("frames_")},
        "sha256": row.sha256,
        "size": row.size,
        "published_at": row.published_at,
        "published_by": row.published_by,
        "recipe": m.get("recipe"),
        "runtime": m.get("runtime"),
        "artifact": {k: (m.get("artifact") or {}).get(k) for k in ("main", "precision", "size_bytes", "macs")},
        "validation": {k: validation.get(k) for k in ("task", "parity", "checks", "passed", "dataset_hash")},
        "latency": {k: (m.get("latency") or {}).get(k) for k in ("p50_ms", "p95_ms", "source")},
        "lineage": {
            "canonical": (m.get("lineage") or {}).get("canonical"),
            "training": (m.get("lineage") or {}).get("training"),
        },
        "rollouts": rollouts,
        "series": series(conn, key),
    }


def device_history(conn, device_id: str, window_seconds: int, limit: int = 30) -> dict:
    """A device's page: what it runs, when it was last seen, its recent summaries and their errors."""
    d = conn.execute(sa.select(db.devices).where(db.devices.c.device_id == device_id)).first()
    if d is None:
        raise ro.NotFound(f"no device {device_id!r} has registered")
    rows = conn.execute(
        sa.select(db.telemetry)
        .where(db.telemetry.c.device_id == device_id)
        .order_by(db.telemetry.c.window_start.desc())
        .limit(limit)
    ).all()
    recent = []
    for r in rows:
        s = json.loads(r.summary)
        recent.append({"window_start": r.window_start, "release": r.release_key, "rollout": r.rollout,
                       "stage": r.stage, "count": s.get("count"), "errors": s.get("errors"),
                       "sync_errors": s.get("sync_errors", 0)})  # fmt: skip
    return {
        "device_id": d.device_id,
        "target": d.target,
        "tags": json.loads(d.tags),
        "last_seen": d.last_seen,
        "current": d.current,
        "recent": recent,
        "errors": sum(r["errors"] or 0 for r in recent),
        "captures": conn.execute(
            sa.select(sa.func.count()).select_from(db.captures).where(db.captures.c.device_id == device_id)
        ).scalar(),
    }


def close_windows(engine, window_seconds: int) -> int:
    """Roll up every window there is, as if its time had passed (a finished demo or test fleet whose
    simulated clock ran ahead of the wall clock)."""
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(db.telemetry.c.window_start))).scalar()
    return 0 if last is None else roll_up(engine, window_seconds, last + 3 * window_seconds)


def write_snapshots(engine, window_seconds: int, out) -> list:
    """Self-contained HTML of the status page and of every rollout's and release's page into ``out``
    (charts inline, data embedded: they open in any browser with no server and no network)."""
    from pathlib import Path

    from .._io import atomic_write
    from .history_page import snapshot
    from .monitoring import health_report
    from .status_page import snapshot as status_snapshot

    out = Path(out)
    close_windows(engine, window_seconds)
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(db.windows.c.window_start))).scalar() or 0.0
        rollouts = ro.list_all(conn)
        keys = sorted({k for r in rollouts for k in (*r["releases"].values(), *r["previous"].values())})
        keys += [s.release_key for s in conn.execute(sa.select(db.stable)).all() if s.release_key not in keys]
        safe = lambda s: "".join(c if c.isalnum() or c in "._-" else "-" for c in s)  # noqa: E731
        links = {f"rollouts:{r['name']}": f"rollout-{safe(r['name'])}.html" for r in rollouts}
        links |= {f"releases:{k}": f"release-{safe(k)}.html" for k in keys}
        pages = {links[f"rollouts:{r['name']}"]: snapshot("rollouts", rollout_history(conn, r["name"], window_seconds),
                                                          links) for r in rollouts}  # fmt: skip
        for k in keys:
            pages[links[f"releases:{k}"]] = snapshot("releases", release_history(conn, *k.split("/")), links)
    report = health_report(engine, window_seconds, now=last + 2 * window_seconds, history_windows=10**6)
    pages["status.html"] = status_snapshot(report, links)
    out.mkdir(parents=True, exist_ok=True)
    for name, html in pages.items():
        atomic_write(out / name, html.encode())
    return [out / name for name in pages]
