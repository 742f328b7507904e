"""Measure every export recipe of every target for the default model on this host.

    python benchmarks/export_recipes.py [--model models/id-docs] [--data data/synth]

Writes benchmarks/results/export-recipes.{json,md}: per target and recipe, the test top-1, drop vs
the canonical model, agreement, quick batch-1 latency (p50/p95, the build's probe, not the
interleaved harness), size, MACs, build time, and the speed ratio against that runtime's fp32.
Bundles go to a temporary folder; pruned fine-tunes are cached and shared across targets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory import progress  # noqa: E402
from factory._io import atomic_write, write_json  # noqa: E402
from factory.bundle.signing import generate_keys  # noqa: E402
from factory.lineage import host_info  # noqa: E402
from factory.pipeline.build import build, build_report  # noqa: E402

RECIPES = {
    "cpu": ["fp32", "fp16", "int8-static", "int8-dynamic", "fp32+structured:0.5", "int8-static+structured:0.5"],
    "openvino": [
        "fp32",
        "fp16",
        "int8-static",
        "int8-weight-only",
        "fp32+structured:0.5",
        "int8-static+structured:0.5",
    ],
    "tflite": ["fp32", "fp16", "int8-static", "int8-dynamic", "int8-weight-only", "fp32+structured:0.5"],
}


def overrides(recipe: str) -> tuple[str, ...]:
    precision, _, prune = recipe.partition("+")
    out = [f"recipe.precision={precision}"]
    if prune:
        method, ratio = prune.split(":")
        out += [f"recipe.pruning.method={method}", f"recipe.pruning.ratio={ratio}"]
    return tuple(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/id-docs")
    ap.add_argument("--data", default="data/synth")
    ap.add_argument("--targets", nargs="*", default=list(RECIPES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export-recipes"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        key, _ = generate_keys(Path(tmp) / "k")
        for target in args.targets:
            for recipe in RECIPES[target]:
                started = time.perf_counter()
                progress.info(f"== {target} {recipe}")
                r = build(
                    args.model,
                    target,
                    key_path=key,
                    data=args.data,
                    out_root=Path(tmp) / "bundles",
                    targets_dir=ROOT / "targets",
                    overrides=overrides(recipe),
                    track=False,
                )
                row = build_report(r) | {"recipe": recipe, "wall_seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
    for row in rows:
        base = next(x for x in rows if x["target"] == row["target"] and x["recipe"] == "fp32")
        row["speedup_vs_fp32_p50"] = round(base["latency_p50_ms"] / row["latency_p50_ms"], 3)
    lines = [
        f"# Export recipes on {host_info()['cpu']} ({host_info()['cores']} cores, flags: "
        f"{', '.join(host_info()['flags'])})",
        "",
        "Quick batch-1 latency from each build (not interleaved); `speedup` is against the same runtime's fp32.",
        "",
        "| target | recipe | top-1 | drop (pt) | agreement | p50 ms | p95 ms | speedup | size MB | MACs (M) | build s "
        "| budgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['recipe']} | {r['top1']:.4f} | {r['accuracy_drop_pt']:+.2f} | "
            f"{r['top1_agreement']:.4f} | "
            f"{r['latency_p50_ms']:.3f} | {r['latency_p95_ms']:.3f} | {r['speedup_vs_fp32_p50']:.2f}x | "
            f"{r['size_bytes'] / 1e6:.2f} | "
            f"{r['macs'] / 1e6:.1f} | {r['wall_seconds']:.0f} | {'pass' if r['passed'] else 'fail'} |"
        )
    lines += ["", f"Reproduce: `python benchmarks/export_recipes.py --model {args.model} --data {args.data}`", ""]
    write_json(args.out + ".json", {"host": host_info(), "rows": rows})
    atomic_write(args.out + ".md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
