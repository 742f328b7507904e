"""What the fleet-health report costs once telemetry has piled up, and what it does to assignments.

    python benchmarks/registry_health.py [--bundles bundles/id-docs] [--key keys/signing.key]

A live registry (uvicorn, SQLite, one worker) with the cpu bundle of `make run` stable; 1,000
devices upload 30 windows of summaries (30,000 in all). Then: the first /v1/health call (every
window read and judged once), a second one (served from the per-window cache), 8 parallel calls,
and the assignment latency of a device polling alone and while the 8 health calls run.
Writes benchmarks/results/registry-health.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402


def _summaries(model: str, version: str, devices: int, windows: int, window_seconds: int) -> list[list[dict]]:
    import numpy as np

    from factory.device.telemetry import Window

    now = time.time()
    batches = []
    for k in range(windows):
        start = now - now % window_seconds - (windows - k) * window_seconds
        batch = []
        for d in range(devices):
            w = Window(
                f"dev-{d}",
                "cpu",
                [],
                {"name": model, "version": version, "target": "cpu"},
                8,
                start=start,
                seconds=window_seconds,
            )
            for i in range(30):
                probs = np.full(8, 0.02)
                probs[(d + i) % 8] = 0.86
                w.add(0.8 + 0.01 * (i % 7), probs, (120.0 + i % 5, 40.0))
            batch.append(w.summary())
        batches.append(batch)
    return batches


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="bundles/id-docs")
    ap.add_argument("--key", default="keys/signing.key")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "registry-health"))
    args = ap.parse_args()
    import httpx
    from registry_server import Server, make_settings

    from factory.bench.artifacts import _expand
    from factory.bundle.manifest import Manifest
    from factory.bundle.signing import generate_keys
    from factory.device.client import RegistryClient
    from factory.registry import db
    from factory.registry.auth import create_token

    cpu = next(f for f in _expand(Path(args.bundles)) if Manifest.read(f).target == "cpu")
    manifest = Manifest.read(cpu)
    result = {"host": host_info(), "devices": args.devices, "windows": args.windows}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fleet, _ = generate_keys(tmp / "fleet")
        settings = make_settings(
            tmp, f"sqlite:///{tmp / 'h.db'}", [str(Path(args.key).with_suffix(".pub").resolve())], str(fleet)
        )
        settings["telemetry"]["evaluate_seconds"] = 0.0
        engine = db.engine_for(settings["database"])
        with engine.begin() as conn:
            admin, viewer = create_token(conn, "admin", "admin"), create_token(conn, "viewer", "viewer")
            poller = create_token(conn, "poller", "device", "dev-0")
        srv = Server(settings)
        settings["public_url"] = srv.url
        srv.start()
        try:
            client = RegistryClient(srv.url, admin, timeout=300)
            client.publish(cpu)
            client.create_rollout(
                {
                    "name": "base",
                    "release": {"name": manifest.name, "version": manifest.version},
                    "stages": [{"percent": 100}],
                }
            )
            client.act("base", "advance", "stable")
            for d in range(args.devices):
                client.request("POST", "/v1/devices", json={"device_id": f"dev-{d}", "target": "cpu", "tags": []})
            stored = 0
            for batch in _summaries(manifest.name, manifest.version, args.devices, args.windows, 60):
                for i in range(0, len(batch), 500):
                    stored += client.call("POST", "/v1/telemetry/batch", json={"summaries": batch[i : i + 500]})[
                        "accepted"
                    ]
            result["summaries"] = stored
            health = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {viewer}"}, timeout=300)
            result["first_health_s"] = round(_timed(lambda: health.get("/v1/health").raise_for_status())[0], 3)
            time.sleep(1.1)  # past the report's one-second sharing: the next call recomputes from the window cache
            result["second_health_s"] = round(_timed(lambda: health.get("/v1/health").raise_for_status())[0], 3)
            params = {"model": manifest.name, "device_id": "dev-0", "target": "cpu"}
            poll = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {poller}"}, timeout=60)

            def assignments(n: int) -> list[float]:
                return [
                    _timed(lambda: poll.get("/v1/assignment", params=params).raise_for_status())[0] * 1000
                    for _ in range(n)
                ]

            alone = assignments(200)
            times, during = [], []
            threads = [
                threading.Thread(target=lambda: times.append(_timed(lambda: health.get("/v1/health"))[0]))
                for _ in range(8)
            ]
            time.sleep(1.1)
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                during += assignments(5)
            for t in threads:
                t.join()
            result["parallel_health_s"] = {"max": round(max(times), 3), "median": round(statistics.median(times), 3)}
            result["assignment_ms"] = {
                "alone_p50": round(statistics.median(alone), 2),
                "during_health_p50": round(statistics.median(during), 2),
                "during_health_max": round(max(during), 2),
                "during_n": len(during),
            }
        finally:
            srv.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out + ".json", result)
    a, h, p = result["assignment_ms"], result["host"], result["parallel_health_s"]
    lines = [
        f"# Fleet-health report cost on {h['cpu']} ({h['cores']} cores), SQLite, 1 uvicorn worker",
        "",
        f"{result['summaries']:,} summaries stored ({args.devices:,} devices x {args.windows} windows of 60 s).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| first /v1/health (every window read and judged once) | {result['first_health_s']} s |",
        f"| next /v1/health (windows from the per-content cache) | {result['second_health_s']} s |",
        f"| 8 parallel /v1/health, slowest / median | {p['max']} / {p['median']} s |",
        f"| assignment p50 alone | {a['alone_p50']} ms |",
        f"| assignment p50 / max while the 8 health calls run | {a['during_health_p50']} / {a['during_health_max']} ms "
        f"({a['during_n']} requests) |",
        "",
        "Reproduce: `python benchmarks/registry_health.py` (after `make run`).",
        "",
    ]
    atomic_write(args.out + ".md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
