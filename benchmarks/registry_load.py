"""Registry throughput on loopback: assignment requests and telemetry ingestion, and the simulator.

    python benchmarks/registry_load.py [--bundles bundles/id-docs] [--key keys/signing.key] [--workers 2]

1. Assignments: 10,000 device ids against a live `factory registry serve` (uvicorn, SQLite) with a
   50% rollout active, driven by wrk (apt-get install wrk) for --seconds; req/s and latency
   percentiles from wrk. Goal: >= 2,000 req/s, p99 < 20 ms.
2. Telemetry: 10,000 registered devices upload summaries in batches of 500 (the gateway endpoint);
   accepted summaries per second. Goal: >= 5,000/s with the default SQLite store.
3. Simulator: 10,000 simulated devices for a few windows (assignments from the signed static
   manifest, one inference pool per release); seconds per window.
Writes benchmarks/results/registry-load.{json,md}. Needs the bundles and key of `make run`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

LUA = """
counter = 0
request = function()
  counter = counter + 1
  local id = counter % 10000
  local path = "/v1/assignment?model=@MODEL@&target=cpu&tags=region-eu&device_id=dev-" .. id
  return wrk.format("GET", path, {["Authorization"] = "Bearer @TOKEN@"})
end
"""


def _wrk(url: str, token: str, model: str, seconds: int, connections: int, tmp: Path) -> dict:
    script = tmp / "assign.lua"
    script.write_text(LUA.replace("@MODEL@", model).replace("@TOKEN@", token))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m[1]), m[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
        "errors": int(non2xx[1]) if non2xx else 0,
        "connections": connections,
        "seconds": seconds,
        "raw": out,
    }


def _telemetry(url: str, token: str, model: str, version: str, devices: int, batches: int, uploaders: int) -> dict:
    import httpx

    from factory.device.telemetry import Window

    rng_lat = [0.5 + (i % 17) * 0.1 for i in range(20)]
    payloads = []
    start = time.time() - 600
    for b in range(batches):
        chunk = []
        for i in range(500):
            d = (b * 500 + i) % devices
            w = Window(
                f"dev-{d}",
                "cpu",
                ["region-eu"],
                {"name": model, "version": version, "target": "cpu"},
                8,
                start=start + b,
                seconds=60,
            )
            for j, lat in enumerate(rng_lat):
                import numpy as np

                probs = np.full(8, 0.01)
                probs[j % 8] = 0.93
                w.add(lat, probs, (120.0 + j, 40.0))
            chunk.append(w.summary())
        payloads.append(json.dumps({"summaries": chunk}))
    from concurrent.futures import ThreadPoolExecutor

    def upload(bodies: list[str]) -> int:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=120
        ) as c:
            return sum(c.post("/v1/telemetry/batch", content=body).json()["accepted"] for body in bodies)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(uploaders) as pool:  # gateways upload in parallel; each uvicorn worker takes one
        accepted = sum(pool.map(upload, [payloads[i::uploaders] for i in range(uploaders)]))
    elapsed = time.perf_counter() - t0
    return {
        "summaries": accepted,
        "seconds": round(elapsed, 2),
        "summaries_per_second": round(accepted / elapsed, 1),
        "batch": 500,
        "uploaders": uploaders,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="bundles/id-docs")
    ap.add_argument("--key", default="keys/signing.key")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, nargs="+", default=[8, 32], help="wrk runs, one per concurrency level")
    ap.add_argument("--telemetry-batches", type=int, default=40)
    ap.add_argument("--sim-devices", type=int, default=10_000)
    ap.add_argument("--sim-windows", type=int, default=3)
    ap.add_argument("--dataset", default="data/synth")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "registry-load"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the assignment benchmark: apt-get install wrk")
    import sqlalchemy as sa
    from registry_server import Server, make_settings

    from factory.bench.artifacts import _expand
    from factory.bundle.manifest import Manifest
    from factory.bundle.signing import generate_keys
    from factory.device.client import RegistryClient
    from factory.registry import db
    from factory.registry.auth import create_token

    folders = _expand(Path(args.bundles))
    cpu = next(f for f in folders if Manifest.read(f).target == "cpu")
    manifest = Manifest.read(cpu)
    result = {"host": host_info(), "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fleet, fleet_pub = generate_keys(tmp / "fleet")
        settings = make_settings(
            tmp, f"sqlite:///{tmp / 'load.db'}", [str(Path(args.key).with_suffix(".pub").resolve())], str(fleet)
        )
        settings["telemetry"]["evaluate_seconds"] = 0.0
        engine = db.engine_for(settings["database"])
        with engine.begin() as conn:
            admin = create_token(conn, "bench-admin", "admin")
            # one token asks for 10,000 device ids: a viewer (a device token speaks only for its own id);
            # the gateway that uploads every device's telemetry in batches is an admin relay
            viewer = create_token(conn, "bench-viewer", "viewer")
            conn.execute(
                db.devices.insert(),
                [
                    {"device_id": f"dev-{i}", "target": "cpu", "tags": '["region-eu"]', "last_seen": db.now()}
                    for i in range(10_000)
                ],
            )
        srv = Server(settings)
        settings["public_url"] = srv.url
        env_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "factory.registry.serve:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(srv.port),
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        import os

        proc = subprocess.Popen(
            env_cmd,
            env=os.environ | {"FACTORY_REGISTRY_SETTINGS": json.dumps(settings)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import httpx

            for _ in range(300):
                try:
                    if httpx.get(srv.url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            with RegistryClient(srv.url, admin) as client:
                client.publish(cpu)
                model, version = manifest.name, manifest.version
                client.create_rollout(
                    {
                        "name": "load",
                        "release": {"name": model, "version": version},
                        "stages": [{"percent": 50}, {"percent": 100}],
                    }
                )
                result["assignment"] = [_wrk(srv.url, viewer, model, args.seconds, c, tmp) for c in args.connections]
                # complete the rollout: every device is then assigned the release its summaries name
                client.request("POST", "/v1/rollouts/load/advance", json={"reason": "benchmark"})
                result["telemetry"] = _telemetry(
                    srv.url, admin, model, version, 10_000, args.telemetry_batches, args.workers
                )
                from factory.device.simulate import Fleet, Knobs, load_images

                sim = Fleet(
                    client,
                    model=model,
                    devices=args.sim_devices,
                    targets=["cpu"],
                    knobs=Knobs(),
                    images=load_images(args.dataset, limit=64),
                    cache=tmp / "sim",
                    window_seconds=60,
                )
                with engine.begin() as conn:  # registered in bulk: registration speed is not what this measures
                    conn.execute(db.devices.delete().where(db.devices.c.device_id.like("sim-%")))
                    conn.execute(
                        db.devices.insert(),
                        [
                            {
                                "device_id": d.device_id,
                                "target": d.target,
                                "tags": json.dumps(d.tags),
                                "last_seen": db.now(),
                            }
                            for d in sim.devices
                        ],
                    )
                sim.registered = True
                t0 = time.perf_counter()
                history = sim.simulate(args.sim_windows, inferences=10, via="manifest", evaluate=False)
                result["simulator"] = {
                    "devices": args.sim_devices,
                    "windows": args.sim_windows,
                    "seconds_per_window": round((time.perf_counter() - t0) / args.sim_windows, 2),
                    "summaries_per_window": history[-1]["uploaded"]["accepted"],
                    "per_window": [h["seconds"] for h in history],
                }
                with engine.connect() as conn:
                    result["telemetry_rows"] = conn.execute(
                        sa.select(sa.func.count()).select_from(db.telemetry)
                    ).scalar_one()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    a, t, s = result["assignment"], result["telemetry"], result["simulator"]
    md = [
        f"# Registry load on {result['host']['cpu']} ({result['host']['cores']} cores), loopback, SQLite, "
        f"{args.workers} uvicorn worker(s)",
        "",
        "| measure | result | goal |",
        "|---|---|---|",
    ]
    for run in a:
        md += [
            f"| assignment requests/s (wrk, {run['connections']} connections, {run['seconds']} s, 10,000 device ids, "
            "50% rollout) | "
            f"{run['requests_per_second']:,.0f} | >= 2,000 |",
            f"| assignment latency p50 / p90 / p99 at {run['connections']} connections | {run['p50_ms']:.2f} / "
            f"{run['p90_ms']:.2f} / "
            f"{run['p99_ms']:.2f} ms | p99 < 20 ms |",
        ]
    md += [
        f"| non-2xx responses | {sum(run['errors'] for run in a)} | 0 |",
        f"| telemetry ingestion (batches of {t['batch']}, {t['uploaders']} concurrent uploaders) | "
        f"{t['summaries_per_second']:,.0f} summaries/s ({t['summaries']} in {t['seconds']} s) | >= 5,000/s |",
        f"| simulator: {s['devices']:,} devices, static manifest, 10 inferences each | {s['seconds_per_window']} s per "
        "window "
        f"({s['summaries_per_window']:,} summaries) | - |",
        "",
        "The load generator (wrk) runs on the same 2 cores as the server.",
        "",
        f"Reproduce: `python benchmarks/registry_load.py --workers {args.workers}` (after `make run`; needs `apt-get "
        "install wrk`).",
        "",
    ]
    for run in a:
        run.pop("raw")
    write_json(args.out + ".json", result)
    atomic_write(args.out + ".md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
