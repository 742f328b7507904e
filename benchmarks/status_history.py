"""What the fleet manager's history pages cost at scale: 10,000 devices, 30 days of 1-minute windows.

    python benchmarks/status_history.py [--devices 10000] [--days 30]

A SQLite registry is filled directly (the figures a month of roll-ups leaves: one row per release and
window, for a new release and the previous one; 10,000 registered devices; a rolled-back rollout with
its audit trail; one device's last 30 summaries). Then, through the real app on loopback: the JSON of
the rollout, release and device pages (median of 10 requests), the pages' size, and the time headless
Chromium takes to parse and draw each page with that JSON embedded (the page writes ``performance.now()``
into the DOM when its charts are drawn); a page load is about the two together. Writes benchmarks/results/status-history.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402


def _fill(engine, devices: int, days: float, window: int) -> dict:
    import numpy as np

    from factory.registry import db
    from factory.registry.history import _merge

    rng = np.random.default_rng(0)
    now = time.time() - time.time() % window
    n = int(days * 86400 / window)
    starts = now - window * np.arange(n)[::-1]
    manifest = {"name": "id-docs", "version": "1.2.0", "target": "cpu", "recipe": {"precision": "int8-static"},
                "runtime": {"backend": "onnxruntime"}, "artifact": {"size_bytes": 2_000_000, "macs": 50_000_000},
                "validation": {"task": "classification", "passed": True, "checks": [], "parity": {"top1": 0.99}},
                "latency": {"p50_ms": 0.9, "p95_ms": 1.1}, "lineage": {"canonical": {}, "training": {}},
                "reference_profile": {}}  # fmt: skip
    ts = db.now()
    with engine.begin() as conn:
        for version in ("1.1.0", "1.2.0"):
            conn.execute(db.releases.insert().values(name="id-docs", version=version, target="cpu", sha256=version * 8,
                                                     size=2_000_000, storage_key=f"bundles/{version}.tar.gz",
                                                     manifest=json.dumps(manifest | {"version": version}),
                                                     published_at=ts, published_by="bench"))  # fmt: skip
        conn.execute(db.devices.insert(), [{"device_id": f"dev-{i:05d}", "target": "cpu", "tags": "[]", "last_seen": ts,
                                            "current": "id-docs/1.1.0/cpu"} for i in range(devices)])  # fmt: skip
        for key, slow in (("id-docs/1.1.0/cpu", 1.0), ("id-docs/1.2.0/cpu", 1.3)):
            rows = []
            for w in starts:
                p95 = float(1.1 * slow * rng.lognormal(0, 0.05))
                fig = {"count": devices * 20, "errors": int(rng.integers(0, 5)), "devices": devices,
                       "error_rate": 0.0002, "p50_ms": p95 / 1.25, "p95_ms": p95,
                       "drift": {"psi_confidence": float(rng.gamma(2, 0.01)), "psi_brightness": float(rng.gamma(2, 0.01)),
                                 "psi_contrast": float(rng.gamma(2, 0.01)), "js_class": float(rng.gamma(2, 0.003))}}  # fmt: skip
                rows.append(
                    {"release_key": key, "resolution": window, "window_start": float(w), "figures": json.dumps(fig)}
                )
            hours = {}
            for r in rows:  # the hourly merges roll_up keeps beside the windows
                hours.setdefault(r["window_start"] - r["window_start"] % 3600, []).append(
                    (r["window_start"], json.loads(r["figures"]))
                )
            rows += [
                {
                    "release_key": key,
                    "resolution": 3600,
                    "window_start": h,
                    "figures": json.dumps(_merge(ws) | {"window_start": h}),
                }
                for h, ws in hours.items()
            ]
            conn.execute(db.windows.insert(), rows)
        plan = {"stages": [{"percent": 10}, {"percent": 100}], "health": {}, "cohort": {}}
        conn.execute(db.rollouts.insert().values(name="id-docs-1.2.0", model="id-docs", status="rolled_back", stage=0,
                                                 stage_started_at=ts, created_at=ts, updated_at=ts, plan=json.dumps(plan),
                                                 releases=json.dumps({"cpu": "id-docs/1.2.0/cpu"}),
                                                 previous=json.dumps({"cpu": "id-docs/1.1.0/cpu"})))  # fmt: skip
        db.add_audit(conn, "ops", "rollout.create", "id-docs-1.2.0", {"release": "id-docs 1.2.0"})
        db.add_audit(conn, "monitor", "rollout.rollback", "id-docs-1.2.0", {"reason": "unhealthy for 2 windows",
                     "evidence": {"windows": [{"window_start": float(starts[-1]), "violations": [
                         "typical latency (geometric mean) is 1.30x the previous release's (limit 1.2x)"]}]}})  # fmt: skip
        summary = {"schema": "factory.telemetry/2", "count": 20, "errors": 0}
        conn.execute(db.telemetry.insert(), [{"idempotency_key": f"dev-00000:{i}", "device_id": "dev-00000",
                                              "release_key": "id-docs/1.2.0/cpu", "window_start": float(starts[-1 - i]),
                                              "received_at": now, "summary": json.dumps(summary)} for i in range(30)])  # fmt: skip
    return {"windows_per_release": n, "devices": devices}


def _chromium_ms(chromium: str, url: str, profile: Path) -> float | None:
    """Navigation to drawn charts, in real time: the page (a snapshot, data embedded) renders on load and
    writes performance.now() into the DOM (no virtual time: --virtual-time-budget would fake the clock)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]  # fmt: skip
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    marker = 'data-rendered-ms="'
    if marker not in dom:
        print("page did not render:", dom.split('id="error"')[1][:300] if 'id="error"' in dom else dom[:300])
        return None
    return float(dom.split(marker)[1].split('"')[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--days", type=float, default=30)
    a = ap.parse_args()
    import httpx

    from factory.registry import db
    from factory.registry.auth import create_token
    from factory.registry.history_page import snapshot
    from tests.registry_server import Server, make_settings

    tmp = Path(tempfile.mkdtemp(prefix="factory-history-"))
    try:
        settings = make_settings(tmp, f"sqlite:///{tmp / 'r.db'}", [], str(tmp / "fleet.key"))
        settings["telemetry"] = settings["telemetry"] | {"window_seconds": 60, "evaluate_seconds": 0.0}
        engine = db.engine_for(settings["database"])
        t0 = time.perf_counter()
        facts = _fill(engine, a.devices, a.days, 60)
        fill_s = time.perf_counter() - t0
        with engine.begin() as conn:
            token = create_token(conn, "viewer", "viewer")
        srv = Server(settings)
        settings["public_url"] = srv.url
        srv.start()
        rows = {}
        try:
            auth = {"Authorization": f"Bearer {token}"}
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            for name, api in (
                ("rollout", "/v1/history/rollouts/id-docs-1.2.0"),
                ("release", "/v1/history/releases/id-docs/1.2.0/cpu"),
                ("device", "/v1/history/devices/dev-00000"),
            ):
                times, size = [], 0
                for _ in range(10):
                    s = time.perf_counter()
                    r = httpx.get(srv.url + api, headers=auth, timeout=60)
                    times.append(time.perf_counter() - s)
                    r.raise_for_status()
                    size = len(r.content)
                snap = tmp / f"{name}.html"
                snap.write_text(snapshot(name + "s", r.json()))
                render = _chromium_ms(chromium, snap.as_uri(), tmp / f"p-{name}") if chromium else None
                rows[name] = {"api_median_s": round(statistics.median(times), 4), "api_max_s": round(max(times), 4),
                              "json_bytes": size, "chromium_rendered_ms": render}  # fmt: skip
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"host": host_info(), "facts": facts, "fill_seconds": round(fill_s, 1), "pages": rows}
    out = ROOT / "benchmarks" / "results" / "status-history"
    write_json(out.with_suffix(".json"), result)
    lines = [
        f"# History pages at scale on {result['host']['cpu']} ({result['host']['cores']} cores), SQLite, 1 worker",
        "",
        f"{a.devices:,} devices registered; {facts['windows_per_release']:,} one-minute windows ({a.days:g} days) rolled up "
        "for the new release and for the previous one; a rolled-back rollout with its audit trail.",
        "",
        "| page | API median | API max (10 requests) | JSON | Chromium: parse and draw (the page with that JSON embedded) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        render = f"{r['chromium_rendered_ms']:.0f} ms" if r["chromium_rendered_ms"] is not None else "not measured"
        lines.append(f"| {name} | {1000 * r['api_median_s']:.0f} ms | {1000 * r['api_max_s']:.0f} ms | "
                     f"{r['json_bytes'] / 1e3:.0f} kB | {render} |")  # fmt: skip
    lines += [
        "",
        "Charts are drawn from at most 720 points per series (windows merged: count-weighted latency, the "
        "largest drift), so the cost does not grow with the fleet or the days kept.",  # fmt: skip
        "",
        "Reproduce: `python benchmarks/status_history.py`.",
    ]
    atomic_write(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
