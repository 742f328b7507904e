"""The container images, built for real and run once: sizes, build times, and the device image's agent against
a registry on the host.

    python benchmarks/images.py --bundle bundles/id-docs/0.1.0/cpu --key keys/signing.key [--skip-build]

Builds with scripts/build-images.sh (podman, a debootstrap base: no image registry needed; RUNTIME=onnxruntime),
runs `factory --help` in the main image, then starts a registry on the host with the bundle published and
rolled out to 100%, and runs the agent image (host network) with a device token, the public key and a folder
of frames mounted: it must pull, verify and switch to the release and upload telemetry. Writes
benchmarks/results/images.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
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

AGENT = "localhost/factory-agent:onnxruntime"
MAIN = "localhost/factory:dev"


def _podman(*args: str, **kw) -> subprocess.CompletedProcess:
    env = os.environ | {"CONTAINERS_CONF": str(ROOT / ".cache" / "images" / "containers.conf")}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, **kw)


def _agent_run(bundle: Path, key: Path, tmp: Path) -> dict:
    import cv2
    import numpy as np
    import sqlalchemy as sa
    from registry_server import start_registry

    from factory.bundle.manifest import Manifest
    from factory.device.client import RegistryClient
    from factory.registry import db

    m = Manifest.read(bundle)
    srv, settings, engine, admin, tokens = start_registry(tmp, key.with_suffix(".pub"), devices=("img-1",))
    try:
        client = RegistryClient(srv.url, admin)
        client.publish(bundle)
        client.create_rollout(
            {"name": "base", "release": {"name": m.name, "version": m.version}, "stages": [{"percent": 100}]}
        )
        client.act("base", "advance", "every device runs it")
        frames = tmp / "frames"
        frames.mkdir()
        rng = np.random.default_rng(0)
        for i in range(12):
            cv2.imwrite(str(frames / f"f{i}.jpg"), rng.integers(0, 255, (96, 128, 3), np.uint8))
        (tmp / "token").write_text(tokens["img-1"])
        for p in (tmp / "token", frames, key.with_suffix(".pub")):
            p.chmod(0o755 if p.is_dir() else 0o644)
        for f in frames.iterdir():
            f.chmod(0o644)
        _podman("volume", "rm", "-f", "factory-agent-bench")
        t0 = time.perf_counter()
        run = _podman(
            "run", "--rm", "--network", "host",
            "-v", "factory-agent-bench:/var/lib/factory-agent",
            "-v", f"{key.with_suffix('.pub')}:/etc/factory-agent/bundle-signing.pub:ro",
            "-v", f"{tmp / 'token'}:/run/secrets/device-token:ro",
            "-v", f"{frames}:/frames:ro",
            AGENT, "--registry", srv.url, "--device-id", "img-1", "--target", "cpu", "--model", m.name,
            "--source", "/frames", "--frames", "12", "--window-seconds", "1", "--poll-seconds", "1",
            timeout=300,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        with engine.connect() as conn:
            rows = conn.execute(sa.select(db.telemetry.c.release_key).where(db.telemetry.c.device_id == "img-1")).all()
        summaries, ran = len(rows), sorted({r[0] for r in rows})
        return {
            "exit": run.returncode,
            "seconds": round(seconds, 1),
            "device_current": ", ".join(ran) or None,  # the release its telemetry names
            "expected": f"{m.name}/{m.version}/{m.target}",
            "telemetry_summaries": summaries,
            "log_tail": (run.stdout + run.stderr)[-1500:],
        }
    finally:
        srv.stop()
        _podman("volume", "rm", "-f", "factory-agent-bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="a signed cpu bundle folder")
    ap.add_argument("--key", required=True, help="its signing key (the .pub beside it is trusted)")
    ap.add_argument("--skip-build", action="store_true", help="use the images already built")
    a = ap.parse_args()
    record = ROOT / ".cache" / "images" / "build.json"  # the last build's times, kept for --skip-build
    build = json.loads(record.read_text()) if record.is_file() else {}
    if not a.skip_build:
        print("building the images (scripts/build-images.sh)", flush=True)
        done = subprocess.run([str(ROOT / "scripts" / "build-images.sh")], capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"build-images.sh failed:\n{done.stderr[-3000:]}")
        build = json.loads(done.stdout.strip().splitlines()[-1])
        record.write_text(json.dumps(build))
    sizes = {img: int(_podman("image", "inspect", "--format", "{{.Size}}", img).stdout.strip() or 0) for img in
             ("localhost/factory-base:bookworm", MAIN, AGENT)}  # fmt: skip
    helped = _podman("run", "--rm", MAIN, "--help")
    torch = _podman("run", "--rm", "--entrypoint", "/opt/factory-agent/bin/python", AGENT, "-c",
                    "import importlib.util as u; print(u.find_spec('torch') is None)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        agent = _agent_run(Path(a.bundle).resolve(), Path(a.key).resolve(), Path(tmp))
    result = {
        "host": host_info(),
        "build": build,
        "sizes_bytes": sizes,
        "main_help_exit": helped.returncode,
        "main_help_first_line": helped.stdout.splitlines()[0] if helped.stdout else helped.stderr[-500:],
        "agent_image_has_no_torch": torch.stdout.strip() == "True",
        "agent_run": agent,
    }
    out = ROOT / "benchmarks" / "results" / "images"
    write_json(out.with_suffix(".json"), result)
    gb = 1e9
    lines = [
        "# Container images, built and run",
        "",
        f"Host: {result['host']['cpu']} ({result['host']['cores']} cores). `python benchmarks/images.py --bundle ... "
        "--key ...` (podman 4.3 with runc, a debootstrap bookworm base made here: no image registry reachable).",
        "",
        "| image | size | build | check |",
        "|---|---|---|---|",
        f"| `localhost/factory-base:bookworm` | {sizes['localhost/factory-base:bookworm'] / gb:.2f} GB | debootstrap "
        "| Python 3.11 venv on PATH |",
        f"| `{MAIN}` | {sizes[MAIN] / gb:.2f} GB | {build.get('factory_build_s', '-')} s | `factory --help` exit "
        f"{helped.returncode}: {result['main_help_first_line']!r} |",
        f"| `{AGENT}` | {sizes[AGENT] / gb:.2f} GB | {build.get('agent_build_s', '-')} s | no torch: "
        f"{result['agent_image_has_no_torch']}; agent against a host registry: exit {agent['exit']}, telemetry for "
        f"{agent['device_current']} (expected {agent['expected']}), {agent['telemetry_summaries']} telemetry "
        f"summaries, {agent['seconds']} s |",
        "",
    ]
    atomic_write(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
