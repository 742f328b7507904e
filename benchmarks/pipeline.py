"""The ID-document flow (localise -> rectify -> classify) as one release, measured end to end.

    python benchmarks/pipeline.py [--work .cache/pipeline] [--per-class 300] [--loc-epochs 12] [--cls-epochs 8]

Steps, each the CLI a user runs (skipped when its output exists; delete the work folder to start over):
synthetic frames -> a localiser (mobilenet_v3_small, 128x128) -> `factory pipeline crops` -> a classifier
of the crops (mobilenet_v3_small, 80x128) -> `factory pipeline build` for cpu, openvino and tflite at fp32
and again at int8-static. Then the end-to-end latency of one frame (both stages, the rectification and
both preprocessings) and of each stage, PyTorch eager vs every
fp32 and int8 release in one interleaved `factory bench` run (each artifact in its own worker), each stage
alone in a second one; and a tampered member refused. Writes
benchmarks/results/pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tasks import _run  # noqa: E402

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

TARGETS = ("cpu", "openvino", "tflite")


def _train(work: Path, name: str, data: Path, task: str, size: list[int], epochs: int, log: list) -> Path:
    out = work / name
    if not (out / "model_card.json").exists():
        cfg = {
            "data": {"manifest": str(data / "dataset.json")},
            "model": {"name": name, "task": task, "architecture": "mobilenet_v3_small", "image_size": size},
            "train": {"epochs": epochs, "lr": 0.003},
            "output": {"dir": str(out)},
            "tracking": {"experiment": f"bench-{name}"},
        }
        (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        _run("train", "--config", str(work / f"{name}.yaml"), log=log)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "pipeline"))
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--loc-epochs", type=int, default=12)
    ap.add_argument("--cls-epochs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0, help="Seconds of each interleaved bench run.")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    frames_ds, crops_ds = work / "frames", work / "crops"
    if not (frames_ds / "dataset.json").exists():
        _run("data", "synth", "--out", str(frames_ds), "--per-class", str(a.per_class), "--size", "256x192", log=log)
    loc = _train(work, "doc-localiser", frames_ds, "document-localisation", [128, 128], a.loc_epochs, log)
    if not (crops_ds / "dataset.json").exists():
        _run("pipeline", "crops", "--localiser", str(loc), "--data", str(frames_ds), "--out", str(crops_ds),
             "--size", "128x80", "--copies", "3", log=log)  # fmt: skip
    cls = _train(work, "id-docs-crops", crops_ds, "classification", [80, 128], a.cls_epochs, log)
    key = work / "keys" / "signing"
    if not key.with_suffix(".key").exists():
        _run("keys", "generate", "--out", str(key), log=log)
    releases = {}
    for precision in ("fp32", "int8-static"):
        version = "0.1.0" if precision == "fp32" else "0.2.0"
        config = work / f"pipeline-{precision}.yaml"
        config.write_text(yaml.safe_dump({"name": "id-docs-flow", "version": version, "localise": str(loc),
                                          "classify": str(cls), "data": str(frames_ds)}))  # fmt: skip
        out = work / f"releases-{precision}"
        if not all((out / "id-docs-flow" / version / t / "manifest.json").exists() for t in TARGETS):
            args = ["pipeline", "build", str(config), "--key", str(key.with_suffix(".key")), "--out", str(out),
                    "--no-track", "--set", f"recipe.precision={precision}"]  # fmt: skip
            for t in TARGETS:
                args += ["--target", t]
            _run(*args, log=log)
        for t in TARGETS:
            folder = out / "id-docs-flow" / version / t
            if (folder / "manifest.json").exists():
                releases[f"{t} {precision}"] = folder

    from factory.bundle.archive import unpack

    rows = {k: json.loads((f / "manifest.json").read_text())["validation"]["end_to_end"] for k, f in releases.items()}
    # one interleaved `factory bench` run, every artifact in its own worker: the canonical pair chained in
    # PyTorch eager, every release end to end, and each stage alone (the canonical models in eager, every member)
    members = work / "members"
    shutil.rmtree(members, ignore_errors=True)
    inputs = [str(work / "pipeline-fp32.yaml")] + [str(f) for f in releases.values()]
    stage_inputs = [str(loc), str(cls)]
    for k, f in releases.items():
        for s in ("localise", "classify"):
            stage_inputs.append(str(unpack(f / f"{s}.tar.gz", members / k.replace(" ", "-") / s)))
    _run("bench", *inputs, "--seconds", str(a.seconds), "--out", str(work / "bench-e2e"), "--no-accuracy", log=log)
    _run("bench", *stage_inputs, "--seconds", str(a.seconds), "--out", str(work / "bench-stages"), "--no-accuracy",
         log=log)  # fmt: skip
    e2e = json.loads((work / "bench-e2e" / "report.json").read_text())
    stages = json.loads((work / "bench-stages" / "report.json").read_text())
    by_path = {r["path"]: r for r in e2e["artifacts"]} | {r["path"]: r for r in stages["artifacts"]}

    def p50(path) -> float:
        return by_path[str(path)]["latency"]["p50_ms"]

    eager = {"end_to_end": p50(work / "pipeline-fp32.yaml"), "localise": p50(loc), "classify": p50(cls)}
    lat = {
        k: {"end_to_end": p50(f), **{s: p50(members / k.replace(" ", "-") / s) for s in ("localise", "classify")}}
        for k, f in releases.items()
    }
    from factory.bundle.signing import load_public_key
    from factory.device.chain import open_release
    from factory.errors import BundleError

    pub = load_public_key(key.with_suffix(".pub"))
    tampered = work / "tampered"
    shutil.rmtree(tampered, ignore_errors=True)
    first = next(iter(releases.values()))
    shutil.copytree(first, tampered)
    data = bytearray((tampered / "classify.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "classify.tar.gz").write_bytes(bytes(data))
    try:
        open_release(tampered, pub)
        refused = None
    except BundleError as exc:
        refused = " ".join(line.strip() for line in str(exc).splitlines()[-2:])
    result = {"host": host_info(), "steps": log, "validation": rows, "latency_p50_ms": {"pytorch-eager": eager} | lat,
              "bench_settings": {"end_to_end": e2e["settings"], "stages": stages["settings"]}, "tampered": refused,
              "test_frames": rows[next(iter(rows))]["n"] if rows else None}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "pipeline"
    write_json(out.with_suffix(".json"), result)
    lines = [
        "# The ID-document flow as one release",
        "",
        f"Host: {result['host']['cpu']} ({result['host']['cores']} cores). `python benchmarks/pipeline.py`: "
        f"{a.per_class} synthetic frames per document type (256x192), a mobilenet_v3_small localiser at 128x128 "
        f"({a.loc_epochs} epochs) and a mobilenet_v3_small classifier of its crops at 80x128 ({a.cls_epochs} "
        f"epochs); {result['test_frames']} test frames.",
        "",
        "| release | end-to-end top-1 | canonical pair | drop pt [95% interval] | verdict (1.0 pt) | on true crops | "
        "corner error % | e2e p50 ms | speedup vs eager | localise ms | classify ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| PyTorch eager | - | - | - | - | - | - | {eager['end_to_end']:.2f} | 1.0x | {eager['localise']:.2f} | "
        f"{eager['classify']:.2f} |",
    ]
    for k, v in rows.items():
        lo, hi = v["interval_pt"]
        t = lat[k]
        lines.append(
            f"| {k} | {v['top1_end_to_end']:.4f} | {v['canonical_top1_end_to_end']:.4f} | {v['drop_pt']:+.2f} "
            f"[{lo:+.2f}, {hi:+.2f}] | {v['verdict']} | {v['top1_on_true_crops']:.4f} | {v['corner_error_pct']:.2f} "
            f"| {t['end_to_end']:.2f} | {eager['end_to_end'] / t['end_to_end']:.1f}x | {t['localise']:.2f} | "
            f"{t['classify']:.2f} |"
        )
    for t in TARGETS:
        for precision in ("fp32", "int8-static"):
            if f"{t} {precision}" not in rows:
                lines.append(f"| {t} {precision} | not released: a stage's bundle failed its budgets (build log) "
                             "| | | | | | | | | |")  # fmt: skip
    lines += [
        "",
        f"Latency: two interleaved `factory bench` runs of {a.seconds:g} s each, every artifact in its own worker "
        "process, stopped while another runs (batch 1, p50). End to end: one BGR frame of the test frames' size "
        "through the localiser's preprocessing and model, the rectification by its corners at the classifier's "
        "input size, the classifier's preprocessing and model; PyTorch eager is the canonical pair chained the "
        "same way (`factory bench configs/pipelines/<name>.yaml <release>...`). The stage columns are each "
        "member bundle (and each canonical model in eager) alone, its model only, in the second run. The drop "
        "is the end-to-end top-1 against the canonical pair's (both ONNX graphs), Tango's paired interval. "
        "'On true crops': the same classifier on the ground-truth corners' crops, what the localiser's error costs.",
        "",
        f"A release whose classifier archive had one byte flipped: refused ({refused}).",
    ]
    atomic_write(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
