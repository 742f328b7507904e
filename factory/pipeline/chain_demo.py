"""``factory pipeline demo``: the ID-document flow end to end on synthetic frames, in one folder.

1. Synthetic frames (a quad and a type each), a document localiser trained on them, the crops it cuts
   (`factory pipeline crops`), a classifier trained on those crops.
2. The pipeline built for the cpu target at fp32 (release 0.1.0) and at int8-static (0.2.0), each
   validated end to end against the canonical pair.
3. One interleaved `factory bench` run: the canonical pair chained in PyTorch eager and both releases,
   each in its own worker process.
4. A local registry: 0.1.0 rolled out to the whole simulated fleet, then 0.3.0, the fp32 release with its
   classifier's logits biased toward one class (the injected fault), through a staged rollout: the fleet's
   telemetry (the class mix against the release's reference profile) halts and rolls it back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .. import progress
from .._io import atomic_write, write_json

__all__ = ["pipeline_demo"]


def _train(work: Path, name: str, data: Path, task: str, size: list[int], epochs: int, architecture: str):
    from ..config import load_config
    from ..train.loop import train
    from ..train.schema import TRAIN_SCHEMA

    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(
        yaml.safe_dump({
            "data": {"manifest": str(data / "dataset.json")},
            "model": {"name": name, "task": task, "architecture": architecture, "image_size": size},
            "train": {"epochs": epochs, "lr": 0.003, "workers": 0, "seed": 0},
            "output": {"dir": str(work / name)},
            "tracking": {"experiment": f"pipeline-demo-{name}", "log_model": False},
        })
    )  # fmt: skip
    progress.info(f"pipeline demo: training {name} ({task}, {architecture}, {epochs} epochs)")
    train(load_config(cfg_path, TRAIN_SCHEMA), config_path=str(cfg_path))
    return work / name


def pipeline_demo(out: Path, *, per_class: int, loc_epochs: int, cls_epochs: int, architecture: str,
                  devices: int, bench_seconds: float) -> dict:  # fmt: skip
    """Run the demo in ``out`` (replaced); the summary (also out/summary.json and out/summary.md)."""
    from ..bench.run import run_bench
    from ..bundle.signing import generate_keys, load_private_key
    from ..data.documents import document_types
    from ..data.synth import synthesize
    from .chain_build import build_pipeline
    from .chain_data import make_crops
    from .chain_fault import faulty_release

    out = Path(out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    frames = out / "frames"
    progress.info(f"pipeline demo: {per_class} synthetic frames per document type -> {frames}")
    with progress.bar("synthesizing", per_class * len(document_types())) as tick:
        synthesize(frames, seed=0, per_class=per_class, size=(256, 192), progress=tick)
    loc = _train(out, "doc-localiser", frames, "document-localisation", [96, 96], loc_epochs, architecture)
    crops = make_crops(loc, frames, out / "crops", size=(96, 64), copies=3)
    cls = _train(out, "id-docs-crops", out / "crops", "classification", [64, 96], cls_epochs, architecture)
    key_path, _ = generate_keys(out / "keys" / "signing")
    releases, rows = {}, {}
    for version, precision in (("0.1.0", "fp32"), ("0.2.0", "int8-static")):
        config = out / f"pipeline-{precision}.yaml"
        config.write_text(yaml.safe_dump({"name": "id-docs-flow", "version": version, "localise": str(loc),
                                          "classify": str(cls), "data": str(frames)}))  # fmt: skip
        (row,) = build_pipeline(
            config, ["cpu"], key_path=key_path, out_root=out / "bundles", overrides=[f"recipe.precision={precision}"],
            cache_dir=out / "cache", track=False,
        )  # fmt: skip
        rows[precision] = row
        if "release" in row:
            releases[precision] = Path(row["release"])
    if not rows["fp32"].get("passed"):
        from ..errors import ValidationError

        why = rows["fp32"].get("error") or (rows["fp32"].get("validation") or {}).get("why")
        raise ValidationError(
            f"the fp32 pipeline release did not pass its end-to-end validation ({why}); the demo rolls it out as "
            "the stable release, so it stops here",
            hint="give it more frames or epochs (--per-class, --loc-epochs, --cls-epochs)",
        )
    progress.info("pipeline demo: one interleaved benchmark of PyTorch eager and the releases")
    report = run_bench([str(out / "pipeline-fp32.yaml"), *map(str, releases.values())], seconds=bench_seconds,
                       accuracy=False)  # fmt: skip
    write_json(out / "bench.json", report)
    latency = {r["path"]: r for r in report["artifacts"]}
    key = load_private_key(key_path)
    accuracy = {"max_drop_pt": 1.0, "confidence": 0.95, "inconclusive": "fail"}
    bad = faulty_release(releases["fp32"], out / "bundles", "0.3.0", key, frames, accuracy)
    fleet = _rollouts(out, releases["fp32"], bad, key_path, frames, devices)
    summary = {
        "folder": str(out),
        "crops": crops,
        "releases": {
            p: {
                "release": r.get("release"),
                "passed": r.get("passed"),
                "error": r.get("error"),
                "validation": {k: v for k, v in (r.get("validation") or {}).items() if not k.startswith("frames_")},
            }
            for p, r in rows.items()
        },  # fmt: skip
        "latency": {
            a["id"]: {"p50_ms": a["latency"]["p50_ms"], "speedup_vs_pytorch_eager": a["speedup_vs_pytorch_eager"]}
            for a in latency.values()
        },
        "host": report["settings"].get("host"),
        "faulty_release": str(bad),
        "fleet": fleet,
    }
    write_json(out / "summary.json", summary)
    atomic_write(out / "summary.md", (_markdown(summary) + "\n").encode())
    return summary


def _rollouts(out: Path, good: Path, bad: Path, key_path: Path, frames: Path, devices: int) -> dict:
    from ..bundle.manifest import Manifest
    from ..bundle.signing import generate_keys
    from ..device.simulate import Fleet, Knobs, load_images
    from ..registry.local import local_client
    from ..registry.settings import default_settings

    fleet_key, _ = generate_keys(out / "fleet")
    settings = default_settings(
        database=f"sqlite:///{out / 'registry.db'}", storage=str(out / "blobs"),
        trusted_keys=[str(key_path.with_suffix(".pub"))], fleet_key=str(fleet_key), public_url="http://local",
    )  # fmt: skip
    settings["telemetry"] = settings["telemetry"] | {"window_seconds": 2, "evaluate_seconds": 0.0}
    g, b = Manifest.read(good), Manifest.read(bad)
    with local_client(settings) as client:
        client.publish(good)
        client.publish(bad, allow_failed=True)  # the gate would stop it: published to show the fleet does too
        client.create_rollout({"name": f"{g.name}-{g.version}", "release": {"name": g.name, "version": g.version},
                               "stages": [{"percent": 100}]})  # fmt: skip
        client.act(f"{g.name}-{g.version}", "advance", "first release of this pipeline: straight to stable")
        fleet = Fleet(client, model=g.name, devices=devices, targets=[g.target], knobs=Knobs(),
                      images=load_images(str(frames)), cache=out / "device-cache", window_seconds=2)  # fmt: skip
        name = f"{b.name}-{b.version}"
        client.create_rollout({
            "name": name, "release": {"name": b.name, "version": b.version},
            "stages": [{"percent": 25, "min_devices_reporting": 3}, {"percent": 100}],
            "health": {"min_inferences": 60, "windows_to_halt": 2},
        })  # fmt: skip
        progress.info(f"pipeline demo: rolling out {b.version} (biased classifier) to {devices} simulated devices")
        windows = 0
        for _ in range(10):
            fleet.simulate(1, inferences=30)
            windows += 1
            if client.rollout(name)["status"] in ("rolled_back", "completed"):
                break
        r = client.rollout(name)
        halt = next((e for e in client.audit(rollout=name) if e["action"] == "rollout.rollback"), None)
    from ..registry import db
    from ..registry.history import write_snapshots

    pages = write_snapshots(db.engine_for(settings["database"]), 2, out / "pages")  # status, rollouts, releases
    return {"rollout": name, "status": r["status"], "stage": r["stage"], "windows": windows, "rollback": halt,
            "pages": [str(p) for p in pages]}  # fmt: skip


def _markdown(s: dict) -> str:
    lines = [
        "# Pipeline demo: localise -> rectify -> classify as one release",
        "",
        "| release | end-to-end top-1 | canonical pair | drop pt [95% interval] | verdict | corner error % | "
        "p50 ms | speedup vs PyTorch eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_version = {a.split("@")[-1]: v for a, v in s["latency"].items()}
    eager = s["latency"].get("pytorch-eager-chain")
    if eager:
        lines.append(f"| PyTorch eager (canonical pair) | - | - | - | - | - | {eager['p50_ms']:.2f} | 1.0x |")
    for precision, r in s["releases"].items():
        v = r["validation"]
        if not v:
            lines.append(f"| cpu {precision} | failed: {r['error']} | | | | | | |")
            continue
        lat = by_version.get(Path(r["release"]).parent.name, {})
        lo, hi = v["interval_pt"]
        speed = lat.get("speedup_vs_pytorch_eager")
        lines.append(
            f"| cpu {precision} | {v['top1_end_to_end']:.4f} | {v['canonical_top1_end_to_end']:.4f} | "
            f"{v['drop_pt']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {v['verdict']} | {v['corner_error_pct']:.2f} | "
            f"{lat.get('p50_ms', float('nan')):.2f} | {f'{speed:.1f}x' if speed else '-'} |"
        )
    f = s["fleet"]
    reason = (f["rollback"] or {}).get("detail", {}).get("reason") if f["rollback"] else None
    lines += [
        "",
        f"Rollout {f['rollout']} (the fp32 release with its classifier biased toward one class): {f['status']} "
        f"after {f['windows']} windows{f' ({reason})' if reason else ''}.",
    ]
    return "\n".join(lines)
