"""``factory pipeline crops|build|verify|run``: the ID-document flow (localise, rectify, classify) as one release."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import progress

__all__ = ["pipeline_group"]


@click.group("pipeline")
def pipeline_group() -> None:
    """Two models as one release: a document localiser, then a classifier of the rectified crop.

    \b
      factory pipeline crops    the classifier's training data: frames rectified by the localiser
      factory pipeline build    both stages built per target, validated end to end, signed as one
      factory pipeline verify   check a release and every member bundle
      factory pipeline run      run a release on images (JSON lines: corners, label, confidence)
      factory pipeline demo     all of it on synthetic frames, then a bad classifier halted by the fleet
    """


@pipeline_group.command("crops")
@click.option("--localiser", required=True, type=click.Path(exists=True, file_okay=False), help="Localiser model dir.")
@click.option("--data", required=True, type=click.Path(exists=True), help="Frames dataset (a quad and a label each).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Crops dataset folder to write.")
@click.option("--size", default="128x80", show_default=True, help="Crop WIDTHxHEIGHT: the classifier's input size.")
@click.option("--copies", default=3, show_default=True, help="Crops per training frame (the first unmoved).")
@click.option(
    "--jitter-pct",
    default=None,
    type=float,
    help="Corner noise of the extra training crops, % of the diagonal [default: the localiser's measured "
    "validation corner error].",
)
@click.option("--seed", default=0, show_default=True)
def crops_cmd(localiser, data, out, size, copies, jitter_pct, seed) -> None:
    """Rectify every frame of DATA by the corners the localiser predicts: a dataset to train the classifier on.

    Each crop keeps its frame's split, so the chain's test frames are never trained on. Then:
    factory train --set data.manifest=OUT/dataset.json --set 'model.image_size=[H,W]' ...
    """
    from ..data.synth import parse_size
    from .chain_data import make_crops

    if copies < 1:
        raise click.UsageError("--copies is at least 1")
    result = make_crops(localiser, data, out, size=parse_size(size), copies=copies, jitter_pct=jitter_pct, seed=seed)
    progress.info(
        f"{result['images']} crops in {out} (per split {result['per_split']}); the localiser's validation corner "
        f"error {result['localiser_val_corner_error_pct']:.2f}% of the diagonal, training crops jittered by "
        f"{result['jitter_pct']:.2f}%"
    )
    click.echo(json.dumps(result))


@pipeline_group.command("build")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", "targets", required=True, multiple=True, help="Target profile name; repeatable.")
@click.option("--key", "key_path", default="keys/signing.key", show_default=True, type=click.Path())
@click.option("--out", "out_root", default="bundles", show_default=True, type=click.Path(file_okay=False))
@click.option("--targets-dir", default=None, type=click.Path(file_okay=False), help="Folder of target profiles.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of both stages' profile.")
@click.option(
    "--stage-set",
    "stage_overrides",
    multiple=True,
    metavar="STAGE:KEY=VALUE",
    help="Override a key of one stage's profile (localise or classify), e.g. classify:recipe.precision=int8-static.",
)
@click.option("--cache-dir", default=".factory/cache", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-track", is_flag=True, help="Do not log the stage builds to MLflow.")
def build_cmd(config, targets, key_path, out_root, targets_dir, overrides, stage_overrides, cache_dir,
              no_track) -> None:  # fmt: skip
    """Build both stages of CONFIG for each --target, validate the chain end to end, sign it as one release.

    \b
    Per target: the localiser's and the classifier's bundles (as `factory build` makes them, each
    judged by its own task's budgets), then the chain on the test frames of CONFIG's data: the
    classifier's top-1 on the localiser's crops against the canonical pair's, by the paired interval
    rule (accuracy.max_drop_pt), and the top-1 on true crops beside it. The release is a bundle in
    OUT/<pipeline>/<version>/<target>/ (manifest.json + manifest.sig + both members' archives):
    `factory publish` and rollouts take it like any bundle. Exit 1 when a stage fails its budgets or
    the chain its margin.

    Each stage may take its own recipe: --stage-set classify:recipe.precision=int8-static keeps the
    localiser at the profile's precision (a search of each model per target finds the winners).

    Example: factory pipeline build configs/pipelines/id-docs.yaml --target cpu --target tflite
    """
    from .chain_build import build_pipeline

    rows = build_pipeline(
        config, targets, key_path=key_path, out_root=out_root, targets_dir=targets_dir, overrides=overrides,
        stage_overrides=stage_overrides, cache_dir=cache_dir, track=not no_track,
    )  # fmt: skip
    click.echo(_table(rows))
    if not all(r.get("passed") for r in rows):
        raise SystemExit(1)


def _table(rows: list[dict]) -> str:
    lines = [
        "| target | end-to-end top-1 | canonical | drop pt [interval] | verdict | on true crops | corner error % | "
        "release |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r.get("validation")
        if not v:
            lines.append(f"| {r['target']} | - | - | - | failed: {r['error']} | - | - | - |")
            continue
        lo, hi = v["interval_pt"]
        lines.append(
            f"| {r['target']} | {v['top1_end_to_end']:.4f} | {v['canonical_top1_end_to_end']:.4f} | "
            f"{v['drop_pt']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {v['verdict']} | {v['top1_on_true_crops']:.4f} | "
            f"{v['corner_error_pct']:.2f} | {r['release']} |"
        )
    return "\n".join(lines)


@pipeline_group.command("verify")
@click.argument("release", type=click.Path(exists=True, file_okay=False))
@click.option("--key", "public_key", default="keys/signing.pub", show_default=True, type=click.Path())
def verify_cmd(release, public_key) -> None:
    """Check RELEASE's signature and every member bundle (its signature, its files, its sha256 as named)."""
    from ..bundle.signing import load_public_key
    from ..device.chain import open_release

    m = open_release(release, load_public_key(public_key)).manifest
    members = ", ".join(f"{s['stage']} {s['name']} {s['version']}" for s in m.extra["pipeline"]["stages"])
    click.echo(f"ok: pipeline {m.name} {m.version} for {m.target} ({members})")


@pipeline_group.command("run")
@click.argument("release", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "public_key", default="keys/signing.pub", show_default=True, type=click.Path())
def run_cmd(release, images, public_key) -> None:
    """Run a verified RELEASE on IMAGES: one JSON line each (corners as fractions, label, confidence)."""
    import numpy as np

    from ..bundle.signing import load_public_key
    from ..device.chain import open_release
    from ..errors import InputError
    from ..imagesize import decode_checked

    chain = open_release(release, load_public_key(public_key))
    for path in images:
        frame = decode_checked(Path(path).read_bytes(), what=path)  # sized from its header before decoding
        if frame is None:
            raise InputError(f"{path} is not an image OpenCV can decode")
        result, _ = chain.infer(frame)
        h, w = frame.shape[:2]
        corners = (result["corners"] / np.float64([w, h])).reshape(-1)
        click.echo(
            json.dumps(
                {
                    "image": path,
                    "corners": [round(float(v), 4) for v in corners],
                    "label": result["label"],
                    "confidence": round(float(result["confidence"]), 4),
                }
            )
        )


@pipeline_group.command("demo")
@click.option(
    "--out",
    default=".factory/pipeline-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of the demo (replaced).",
)
@click.option("--per-class", default=250, show_default=True, help="Synthetic frames per document type.")
@click.option("--loc-epochs", default=25, show_default=True, help="Epochs of the localiser.")
@click.option("--cls-epochs", default=15, show_default=True, help="Epochs of the crops classifier.")
@click.option("--architecture", default="tiny-cnn", show_default=True, help="Architecture of both stages.")
@click.option("--devices", default=40, show_default=True, help="Simulated devices of the fleet.")
@click.option("--bench-seconds", default=10.0, show_default=True, help="Seconds of the interleaved benchmark.")
def demo_cmd(out, per_class, loc_epochs, cls_epochs, architecture, devices, bench_seconds) -> None:
    """The ID-document flow end to end on synthetic frames (a few minutes on 2 cores).

    \b
    1. frames -> a localiser -> its crops -> a classifier of the crops
    2. the pipeline for cpu at fp32 (0.1.0) and int8-static (0.2.0), each validated end to end
    3. one interleaved benchmark: the canonical pair in PyTorch eager vs both releases
    4. a local registry and a simulated fleet: 0.1.0 to everyone, then 0.3.0 (the fp32 release with
       its classifier biased toward one class) through a staged rollout: rolled back by telemetry
    Writes OUT/summary.md and OUT/summary.json (and everything it made: models, bundles, registry).
    """
    from .chain_demo import pipeline_demo

    summary = pipeline_demo(Path(out), per_class=per_class, loc_epochs=loc_epochs, cls_epochs=cls_epochs,
                            architecture=architecture, devices=devices, bench_seconds=bench_seconds)  # fmt: skip
    click.echo((Path(summary["folder"]) / "summary.md").read_text())
    if summary["fleet"]["status"] != "rolled_back":
        raise SystemExit(1)
