"""Does one interleaved run of many artifacts measure each of them as if it ran alone?

    python benchmarks/bench_isolation.py [--bundles bundles/id-docs/0.1.0] [--seconds 20]

Three runs of the harness (one worker process per artifact; every idle worker stopped while one is
timed), all in one process, one after the other:
1. 8-way A/A: the cpu (ONNX Runtime) bundle eight times. Goal: every copy's median within 5% of the
   run's median of medians.
2. Mixed: the cpu, openvino and tflite bundles, each twice. Goal: each copy within 5% of its twin's
   group median.
3. Each of the three bundles alone. Goal: its median within 10% of its median in the 8-way (cpu) or
   mixed run of the same repeat (the median over repeats of that paired ratio).
The three kinds of run alternate, ``--repeats`` times.
Writes benchmarks/results/bench-isolation.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402


def _medians(paths: list[str], seconds: float) -> dict[str, float]:
    from factory.bench.run import run_bench

    report = run_bench(paths, seconds=seconds, accuracy=False)
    return {a["id"]: a["latency"]["p50_ms"] for a in report["artifacts"]} | {"_settings": report["settings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="bundles/id-docs/0.1.0", help="a version folder holding cpu, openvino, tflite")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench-isolation"))
    args = ap.parse_args()
    folder = Path(args.bundles)
    cpu, ov, tfl = (str(folder / t) for t in ("cpu", "openvino", "tflite"))
    result: dict = {"host": host_info(), "seconds": args.seconds}

    aa_runs, mixed_runs, alone_runs = [], [], {"cpu": [], "openvino": [], "tflite": []}
    for _ in range(args.repeats):  # separate runs drift by several percent over minutes: alternate them
        for path, key in ((cpu, "cpu"), (ov, "openvino"), (tfl, "tflite")):
            m = _medians([path], args.seconds / 2)
            m.pop("_settings")
            alone_runs[key].append(next(iter(m.values())))
        aa_runs.append(_medians([cpu] * 8, args.seconds))
        settings = aa_runs[-1].pop("_settings")
        mixed_runs.append(_medians([cpu, cpu, ov, ov, tfl, tfl], args.seconds))
        mixed_runs[-1].pop("_settings")
    aa = aa_runs[-1]
    centre = statistics.median(aa.values())
    result["aa"] = {
        "runs": aa_runs,
        "medians_ms": aa,
        "median_of_medians_ms": centre,
        "isolation": settings.get("isolation"),
        "max_deviation": max(abs(v / statistics.median(r.values()) - 1) for r in aa_runs for v in r.values()),
    }
    mixed = mixed_runs[-1]
    groups: dict[str, list[float]] = {}
    for k, v in mixed.items():
        groups.setdefault(k.split("#")[0], []).append(v)

    def deviations(run: dict) -> list[float]:
        g: dict[str, list[float]] = {}
        for k, v in run.items():
            g.setdefault(k.split("#")[0], []).append(v)
        return [abs(v / statistics.median(vs) - 1) for vs in g.values() for v in vs]

    result["mixed"] = {
        "runs": mixed_runs,
        "medians_ms": mixed,
        "max_deviation": max(d for r in mixed_runs for d in deviations(r)),
    }
    alone = {k: statistics.median(v) for k, v in alone_runs.items()}

    def in_run_of(k: str, i: int) -> float:  # the artifact's median in repeat i: the 8-way run (cpu) or the mixed one
        run = aa_runs[i] if k == "cpu" else mixed_runs[i]
        return statistics.median(v for kk, v in run.items() if kk.startswith(k + "@"))

    # paired by repeat (the alone runs and the many-artifact runs of one repeat are minutes apart, not tens of
    # minutes), then the median over repeats: separate runs drift by several percent over minutes here
    ratios = {k: [in_run_of(k, i) / alone_runs[k][i] for i in range(args.repeats)] for k in alone_runs}
    in_run = {k: statistics.median(in_run_of(k, i) for i in range(args.repeats)) for k in alone_runs}
    result["alone"] = {
        "runs": alone_runs,
        "medians_ms": alone,
        "in_run_ms": in_run,
        "ratios_in_run_to_alone": ratios,
        "max_deviation": max(abs(statistics.median(r) - 1) for r in ratios.values()),
        "max_single_repeat_deviation": max(abs(x - 1) for r in ratios.values() for x in r),
    }
    result["goals"] = {
        "aa_within_5pct": result["aa"]["max_deviation"] <= 0.05,
        "mixed_within_5pct": result["mixed"]["max_deviation"] <= 0.05,
        "alone_within_10pct": result["alone"]["max_deviation"] <= 0.10,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out + ".json", result)
    h = result["host"]
    lines = [
        f"# Benchmark isolation on {h['cpu']} ({h['cores']} cores), {args.seconds:g} s per run, {args.repeats} repeats",
        "",
        f"Isolation: {result['aa']['isolation']}. The last repeat's runs:",
        "",
        "| run | artifact | p50 ms | deviation |",
        "|---|---|---|---|",
    ]
    lines += [f"| 8-way A/A | {k} | {v:.3f} | {v / centre - 1:+.1%} |" for k, v in aa.items()]
    lines += [
        f"| mixed | {k} | {v:.3f} | {v / statistics.median(groups[k.split('#')[0]]) - 1:+.1%} |"
        for k, v in mixed.items()
    ]
    lines += [
        f"| alone | {k} | {alone[k]:.3f} (median of {args.repeats} runs) | in the {'8-way' if k == 'cpu' else 'mixed'} "
        f"runs {in_run[k]:.3f}; ratio per repeat {', '.join(f'{x:.3f}' for x in ratios[k])}, median "
        f"{statistics.median(ratios[k]) - 1:+.1%} |"
        for k in alone
    ]
    lines += [
        "",
        f"Largest deviation over all {args.repeats} repeats: 8-way A/A {result['aa']['max_deviation']:.1%}, mixed "
        f"{result['mixed']['max_deviation']:.1%}, alone vs in the run (median over repeats of the paired ratio) "
        f"{result['alone']['max_deviation']:.1%}, in a single repeat up to "
        f"{result['alone']['max_single_repeat_deviation']:.1%}. The kinds of run alternate because separate runs on "
        "this machine drift by several percent over minutes (the alone runs of one artifact spread by up to "
        f"{max(max(v) / min(v) - 1 for v in alone_runs.values()):.0%}); within one run the copies of an artifact "
        "agree.",
        "",
        "Goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["goals"].items()) + ".",
        "",
        "Reproduce: `python benchmarks/bench_isolation.py` (after `make run`).",
        "",
    ]
    atomic_write(args.out + ".md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
