"""Detection and document localisation through the factory, measured: the canonical model's task metric on
its test split, and for every target's bundle the metric's loss against it (paired interval) and the
speedup over PyTorch eager end to end (model plus the task's post-processing), in one interleaved run.

    python benchmarks/tasks.py detection [--work .cache/tasks] [--epochs 30] [--frames 3000]
    python benchmarks/tasks.py document-localisation [--epochs 40] [--per-class 800] [--size 160x160]

Each step is the CLI a user runs (printed before it runs) and is skipped when its output exists
(delete the work folder to start over). Latency runs last, alone: run nothing else meanwhile.
Writes benchmarks/results/task-<task>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

DETECTION_TYPES = "id-card,passport,visa,driving-licence"
TARGETS = ("cpu", "openvino", "tflite")


def _run(*args: str, log: list) -> float:
    cmd = [str(ROOT / ".venv" / "bin" / "factory"), *args]
    print("$ factory " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT)
    seconds = time.perf_counter() - t0
    shown = " ".join(a.replace(str(ROOT) + "/", "") for a in args)  # paths relative to the repository
    log.append({"command": "factory " + shown, "seconds": round(seconds, 1), "exit": done.returncode})
    if done.returncode not in (0, 1):  # 1: a build whose bundle misses a budget; still measured and reported
        raise SystemExit(f"factory {args[0]} failed with exit {done.returncode}")
    return seconds


def _train_config(task: str, work: Path, data: Path, a) -> Path:
    h, w = (int(v) for v in a.image_size.split("x"))
    cfg = {
        "data": {"manifest": str(data / "dataset.json")},
        "model": {"name": f"bench-{task}", "task": task, "architecture": a.architecture, "image_size": [h, w]},
        "train": {"epochs": a.epochs, "lr": 0.003},
        "augment": {"rotate_deg": 5.0, "perspective": 0.03} if task == "detection" else {},
        "output": {"dir": str(work / "model")},
        "tracking": {"experiment": f"bench-{task}"},
    }
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["detection", "document-localisation"])
    ap.add_argument("--work", default=str(ROOT / ".cache" / "tasks"))
    ap.add_argument("--architecture", default="mobilenet_v3_small")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--frames", type=int, default=3000, help="detection frames to synthesize")
    ap.add_argument("--per-class", type=int, default=800, help="localisation photos per document type")
    ap.add_argument("--size", default=None, help="synthetic image size WxH")
    ap.add_argument("--image-size", default=None, help="model input HxW")
    ap.add_argument("--bench-seconds", type=float, default=30.0)
    a = ap.parse_args()
    det = a.task == "detection"
    a.epochs = a.epochs or (30 if det else 40)
    a.size = a.size or ("160x128" if det else "160x120")
    a.image_size = a.image_size or ("128x160" if det else "128x128")
    work = Path(a.work) / a.task
    work.mkdir(parents=True, exist_ok=True)
    data, log = work / "data", []
    if not (data / "dataset.json").exists():
        extra = ["--frames", str(a.frames), "--types", DETECTION_TYPES] if det else ["--per-class", str(a.per_class)]
        split = "0.6,0.2,0.2" if det else "0.225,0.2,0.575"
        _run("data", "synth", "--out", str(data), "--size", a.size, "--split", split, *extra, log=log)
    if not (work / "model" / "model_card.json").exists():
        _run("train", "--config", str(_train_config(a.task, work, data, a)), log=log)
    bundles = work / "bundles"
    if not list(bundles.glob("*/*/*/manifest.json")):
        args = ["build", "--model", str(work / "model"), "--data", str(data), "--key", str(work / "signing.key"),
                "--out", str(bundles), "--report-dir", str(work / "build-report"), "--no-track"]  # fmt: skip
        _run("keys", "generate", "--out", str(work / "signing"), "--if-missing", log=log)
        for t in TARGETS:
            args += ["--target", t]
        _run(*args, log=log)
    folders = [str(next(bundles.glob(f"*/*/{t}"))) for t in TARGETS]
    _run("bench", str(work / "model"), *folders, "--seconds", str(a.bench_seconds), "--out", str(work / "bench"),
         log=log)  # fmt: skip
    report = json.loads((work / "bench" / "report.json").read_text())
    card = json.loads((work / "model" / "model_card.json").read_text())
    rows = []
    for r in report["artifacts"]:
        m = json.loads((Path(r["path"]) / "manifest.json").read_text()) if r["kind"] == "bundle" else None
        acc, lat = r["accuracy"], r["latency"]
        row = {"artifact": r["id"], "backend": r["runtime"]["backend"], "precision": r["runtime"]["precision"],
               "p50_ms": lat["p50_ms"], "postprocess_p50_ms": lat.get("postprocess_p50_ms"),
               "end_to_end_p50_ms": lat.get("end_to_end_p50_ms"),
               "speedup_end_to_end": r.get("speedup_vs_pytorch_eager_end_to_end"),
               "speedup_model": r.get("speedup_vs_pytorch_eager")}  # fmt: skip
        for k in ("map50", "map", "map75", "corner_error_pct", "quad_iou", "n"):
            if k in acc:
                row[k] = acc[k]
        if m:
            checks = {c["check"]: c for c in m["validation"]["checks"]}
            check = checks.get("map50_drop") or checks.get("corner_error_increase")
            row |= {"loss": check["value"], "interval": check["interval"], "verdict": check["verdict"],
                    "build_passed": m["validation"]["passed"],
                    "repair": (m["recipe"].get("quantization_applied") or {}).get("repair")}  # fmt: skip
        rows.append(row)
    result = {
        "task": a.task,
        "host": host_info(),
        "canonical": {
            "architecture": card["architecture"],
            "input": card["input"]["shape"],
            "test": card["metrics"]["test"],
            "training": card["metrics"]["training"],
            "config": _config_facts(card),
        },
        "work": str(work.relative_to(ROOT)) if work.is_relative_to(ROOT) else str(work),
        "rows": rows,
        "commands": log,
        "settings": {k: v for k, v in vars(a).items()},
    }
    out = ROOT / "benchmarks" / "results" / f"task-{a.task}"
    write_json(out.with_suffix(".json"), result)
    atomic_write(out.with_suffix(".md"), _markdown(result).encode())
    print(_markdown(result))


def _config_facts(card: dict) -> dict:
    cfg = card["lineage"].get("config_values") or {}
    return {"epochs": cfg.get("train", {}).get("epochs"), "lr": cfg.get("train", {}).get("lr"),
            "image_size": cfg.get("model", {}).get("image_size")}  # fmt: skip


def _markdown(r: dict) -> str:
    det = r["task"] == "detection"
    test = r["canonical"]["test"]
    head = (
        f"canonical {r['canonical']['architecture']} (input {r['canonical']['input']}): test "
        + (f"mAP@0.5 {test['map50']:.4f}, mAP@[.5:.95] {test['map']:.4f}" if det else
           f"corner error {test['corner_error_pct']:.2f}% of the diagonal, quad IoU {test['quad_iou']:.4f}")
        + f" on {test['n']} frames; {r['canonical']['training']['epochs_run']} epochs in "
        f"{r['canonical']['training']['seconds']:.0f} s"
    )  # fmt: skip
    metric = "mAP@0.5" if det else "corner error %"
    lines = [
        f"# {r['task']}: the canonical model and its bundles",
        "",
        f"Host: {r['host']['cpu']} ({r['host']['cores']} cores). `python benchmarks/tasks.py {r['task']}`.",
        "",
        head + ".",
        "",
        f"| artifact | backend | precision | {metric} | loss [95% interval] | verdict | model p50 ms | "
        "post-processing p50 ms | end to end p50 ms | speedup vs eager (end to end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        value = row.get("map50") if det else row.get("corner_error_pct")
        loss = f"{row['loss']:+.2f} [{row['interval'][0]:+.2f}, {row['interval'][1]:+.2f}]" if "loss" in row else "-"
        post = row.get("postprocess_p50_ms")
        e2e = row.get("end_to_end_p50_ms")
        speed = row.get("speedup_end_to_end") or row.get("speedup_model")
        lines.append(
            f"| {row['artifact']} | {row['backend']} | {row['precision']} | {value:.4f} | {loss} | "
            f"{row.get('verdict', '-')} | {row['p50_ms']:.3f} | {'-' if post is None else f'{post:.3f}'} | "
            f"{'-' if e2e is None else f'{e2e:.3f}'} | {'-' if not speed else f'{speed:.2f}x'} |"
        )
    cfg = r["canonical"].get("config") or {}
    lines += [
        "",
        f"Training: `factory train --config {r['work']}/train.yaml` (task {r['task']}, {cfg.get('epochs')} epochs, "
        f"lr {cfg.get('lr')}, input {cfg.get('image_size')}; the card's lineage holds the full config).",
        "",
        "Commands of this run (a step whose output existed was skipped):",
        "",
    ]
    lines += [f"- `{c['command']}` ({c['seconds']} s)" for c in r["commands"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
