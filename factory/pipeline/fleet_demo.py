"""The fleet part of the main job: publish to a local registry, roll out, watch a simulated fleet.

1. A local registry (in-process; its database and blobs under ``out``) receives the fresh bundles
   and a first rollout takes them to 100% of the fleet: they become the stable release.
2. A re-release of the same bundles (a new version, re-signed) goes through every stage of a
   staged rollout while the simulated fleet reports healthy telemetry: it completes.
3. Another re-release is rolled out with an injected fault (30% slower, or darker inputs) on the
   devices that run it: the monitor halts and rolls it back, with the evidence in the audit log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import progress
from .._io import write_json
from ..bundle.manifest import Manifest, copy_resigned, parse_version

__all__ = ["fleet_demo"]


def _bump(version: str, n: int) -> str:
    major, minor, patch, _ = parse_version(version)
    return f"{major}.{minor}.{patch + n}"


def _retag(src: Path, dest: Path, version: str, key, note: str) -> Manifest:
    """A copy of a bundle under another version, re-signed (same files; the manifest says why)."""
    parse_version(version)

    def edit(m: Manifest) -> None:
        m.lineage["retagged_from"] = {"version": m.version, "note": note}
        m.version = version

    return copy_resigned(src, dest, key, edit)


def fleet_demo(
    bundles: list[Path],
    *,
    key_path: Path,
    dataset: str,
    out: Path,
    devices: int = 200,
    fault: str = "latency",
    window_seconds: int = 2,
    max_windows: int = 12,
) -> dict:
    """Publish, roll out a healthy and a faulty re-release to a simulated fleet; the summary with the audit log."""
    import yaml

    from ..bundle.signing import generate_keys, load_private_key
    from ..device.simulate import Fleet, Knobs, load_images
    from ..registry.local import local_client
    from ..registry.settings import default_settings

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    fleet_key, fleet_pub = generate_keys(out / "fleet")
    settings = default_settings(
        database=f"sqlite:///{(out / 'registry.db').resolve()}",
        storage=str((out / "blobs").resolve()),
        trusted_keys=[str(key_path.with_suffix(".pub").resolve())],
        fleet_key=str(fleet_key.resolve()),
        public_url="http://local",
    )
    settings["telemetry"] = settings["telemetry"] | {"window_seconds": window_seconds, "evaluate_seconds": 0.0}
    (out / "registry.yaml").write_text(yaml.safe_dump(settings | {"public_url": "http://127.0.0.1:8700"}))
    key = load_private_key(key_path)
    first = Manifest.read(bundles[0])
    model, v0 = first.name, first.version
    good, bad = _bump(v0, 100), _bump(v0, 101)
    stages = [
        {"percent": 10, "min_duration_minutes": 0, "min_devices_reporting": 5},
        {"percent": 50, "min_duration_minutes": 0, "min_devices_reporting": 5},
        {"percent": 100, "min_duration_minutes": 0, "min_devices_reporting": 5},
    ]
    summary: dict = {
        "registry": str(out),
        "model": model,
        "releases": {"stable": v0, "good": good, "bad": bad},
        "fault": fault,
    }
    with local_client(settings) as client:
        for b in bundles:
            client.publish(b)
            for version, note in (
                (good, "demo re-release: healthy"),
                (bad, f"demo re-release: injected {fault} fault"),
            ):
                copy = out / "bundles" / version / b.name
                _retag(b, copy, version, key, note)
                client.publish(copy)
        targets = [Manifest.read(b).target for b in bundles]
        client.create_rollout(
            {"name": f"{model}-{v0}", "release": {"name": model, "version": v0}, "stages": [{"percent": 100}]}
        )
        client.act(f"{model}-{v0}", "advance", "first release of this model: straight to stable")
        knobs = Knobs(
            slow_release=bad if fault == "latency" else None,
            slowdown=1.3,
            dark_release=bad if fault == "drift" else None,
        )
        fleet = Fleet(
            client,
            model=model,
            devices=devices,
            targets=targets,
            knobs=knobs,
            images=load_images(dataset),
            cache=out / "device-cache",
            window_seconds=window_seconds,
        )
        results = {}
        for label, version in (("good", good), ("bad", bad)):
            name = f"{model}-{version}"
            client.create_rollout({"name": name, "release": {"name": model, "version": version}, "stages": stages})
            progress.info(f"fleet demo: rolling out {version} ({label}) to {devices} simulated devices")
            history = []
            for _ in range(max_windows):
                history += fleet.simulate(
                    1, inferences=60
                )  # ~360 per target per window at 10%: PSI noise well under 0.25
                status = client.rollout(name)["status"]
                if status in ("completed", "rolled_back"):
                    break
            r = client.rollout(name)
            results[label] = {
                "rollout": name,
                "status": r["status"],
                "stage": r["stage"],
                "windows": len(history),
                "duplicates": sum(h["uploaded"]["duplicate"] for h in history),
            }
        summary["rollouts"] = results
        summary["audit"] = client.audit(limit=200)
        summary["fleet_manifest"] = str(out / "fleet-manifest.json")
        write_json(out / "fleet-manifest.json", client.fleet_manifest())
    from ..registry import db
    from ..registry.history import write_snapshots

    pages = write_snapshots(db.engine_for(settings["database"]), window_seconds, out)
    summary["pages"] = [str(p) for p in pages]  # status.html and one page per rollout and release
    write_json(out / "summary.json", summary)
    return summary
