"""`factory train --workers N` against one process: wall time, and how far the result moves.

    python benchmarks/train_workers.py [--seeds 0,1,2] [--epochs 8] [--per-class 150]

Synthesizes a document dataset (4 classes), then trains mobilenet_v3_small at 96x96 from scratch with each
seed on 1 and on 2 workers (DDP over gloo), one run after another with nothing else running. Records the
command's wall time and the training loop's own time, test top-1 and the per-seed difference between 2
workers and 1, beside the spread between seeds of 1 worker: the tolerance the README states is the
largest difference measured here. A seed on 2 workers is also run twice to check it reproduces its
weights exactly. On 2 cores, expect no speedup (two processes share the cores one process already used).
Writes benchmarks/results/train-workers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402


def _factory(*args, cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv/bin/factory"), "-q", *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"factory {args[0]} failed: {done.stderr[-1500:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=150)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="factory-ddp-bench-"))
    runs = []
    try:
        _factory("data", "synth", "--out", str(tmp / "data"), "--per-class", str(a.per_class), "--size", "160x120",
                 cwd=tmp)  # fmt: skip
        for seed in seeds:
            for workers in (1, 2) if seed != seeds[0] else (1, 2, 2):
                out = tmp / f"m-{seed}-{workers}-{len(runs)}"
                cfg = {"data": {"manifest": str(tmp / "data/dataset.json")},
                       "model": {"architecture": "mobilenet_v3_small", "image_size": [96, 96]},
                       "train": {"epochs": a.epochs, "batch_size": 32, "seed": seed},
                       "distributed": {"workers": workers},
                       "output": {"dir": str(out)}, "tracking": {"log_model": False}}  # fmt: skip
                (tmp / "train.yaml").write_text(yaml.safe_dump(cfg))
                wall = _factory("train", "--config", str(tmp / "train.yaml"), cwd=tmp)
                card = json.loads((out / "model_card.json").read_text())
                runs.append({"seed": seed, "workers": workers, "wall_s": round(wall, 1),
                             "train_s": card["metrics"]["training"]["seconds"],
                             "test_top1": card["metrics"]["test"]["top1"], "test_n": card["metrics"]["test"]["n"],
                             "final_train_loss": card["history"][-1]["train_loss"],
                             "weights_sha256": card["files"]["weights"]["sha256"]})  # fmt: skip
                print(runs[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def first(seed, workers):
        return next(r for r in runs if r["seed"] == seed and r["workers"] == workers)

    deltas = {s: round(100 * (first(s, 2)["test_top1"] - first(s, 1)["test_top1"]), 2) for s in seeds}
    ones = [first(s, 1)["test_top1"] for s in seeds]
    spread = round(100 * (max(ones) - min(ones)), 2)
    twice = [r["weights_sha256"] for r in runs if r["seed"] == seeds[0] and r["workers"] == 2]
    # each seed's two runs ran back to back: their ratio is the paired comparison of the training loops
    ratios = {s: round(first(s, 2)["train_s"] / first(s, 1)["train_s"], 3) for s in seeds}
    result = {"host": host_info(), "epochs": a.epochs, "per_class": a.per_class, "runs": runs,
              "delta_top1_pt": deltas, "max_abs_delta_pt": max(abs(d) for d in deltas.values()),
              "seed_spread_1_worker_pt": spread, "reproduces_exactly": len(set(twice)) == 1,
              "train_loop_ratio_2_over_1": ratios}  # fmt: skip
    out = ROOT / "benchmarks/results/train-workers"
    write_json(out.with_suffix(".json"), result)
    host = result["host"]
    lines = [
        f"# Training on 1 and 2 workers on {host['cpu']} ({host['cores']} cores)",
        "",
        f"mobilenet_v3_small at 96x96 from scratch, {a.epochs} epochs, batch 32 (global), synthetic documents "
        f"({a.per_class} per class, 4 classes), test split of {runs[0]['test_n']} images. Runs one after another.",
        "",
        "| seed | workers | command wall time | training loop | final train loss | test top-1 |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['seed']} | {r['workers']} | {r['wall_s']:.1f} s | {r['train_s']:.1f} s | {r['final_train_loss']:.4f} | "
            f"{r['test_top1']:.4f} |"
            for r in runs
        ],  # fmt: skip
        "",
        f"- 2 workers minus 1, test top-1 per seed: {', '.join(f'seed {s}: {d:+.2f} pt' for s, d in deltas.items())}; "
        f"largest |difference| **{result['max_abs_delta_pt']:.2f} pt**, against a spread of {spread:.2f} pt between "
        "the seeds on 1 worker.",
        f"- Seed {seeds[0]} on 2 workers twice: weights {'identical' if result['reproduces_exactly'] else 'DIFFERENT'}.",
        f"- Training loop on 2 workers over 1, per seed (the two runs back to back): "
        f"{', '.join(f'seed {s}: {r:.2f}x' for s, r in ratios.items())} (both share {host['cores']} cores: no "
        "speedup is possible here; the command's wall time adds the workers' start and their own image loading).",
        "",
        "Reproduce: `python benchmarks/train_workers.py`.",
    ]
    atomic_write(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
