"""``factory bench`` and ``factory gate``."""

from __future__ import annotations

import json

import click

__all__ = ["bench_cmd", "gate_cmd"]


@click.command("bench")
@click.argument("inputs", nargs=-1, required=True, metavar="BUNDLE_OR_MODEL...")
@click.option(
    "--data", default=None, type=click.Path(), help="Dataset for accuracy [default: the one the model was trained on]."
)
@click.option("--seconds", default=10.0, show_default=True, help="Time budget for the interleaved latency loop.")
@click.option("--rounds", default=100_000, show_default=True, help="Stop after this many rounds even if time is left.")
@click.option("--warmup", default=20, show_default=True, help="Untimed runs per artifact first.")
@click.option(
    "--threads",
    default=2,
    show_default=True,
    help="Threads for PyTorch eager and bare model files (bundles use their profile's).",
)
@click.option(
    "--input-shape", default=None, help="Input shape for a bare model file with dynamic dimensions, e.g. 1,3,224,224."
)
@click.option(
    "--pubkey", default=None, type=click.Path(dir_okay=False), help="Verify bundle signatures with this key first."
)
@click.option("--no-accuracy", is_flag=True, help="Latency only.")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Write report.json, report.md, latency.png, accuracy_vs_latency.png.",
)
@click.option(
    "--save-baseline",
    default=None,
    type=click.Path(file_okay=False),
    help="Also save a baseline folder for `factory gate`: the report plus a copy of every artifact measured.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
def bench_cmd(
    inputs, data, seconds, rounds, warmup, threads, input_shape, pubkey, no_accuracy, out, save_baseline, as_json
) -> None:
    """Measure latency and accuracy of bundles and models on this host.

    \b
    BUNDLE_OR_MODEL may be a bundle folder or .tar.gz, a folder of bundles (bundles/id-docs/0.1.0,
    or bundles/id-docs for the newest version), a canonical model folder (run in PyTorch eager:
    the reference for speedups), or a bare model file of any registered runtime (.onnx, OpenVINO
    .xml, .tflite, ExecuTorch .pte: latency on generated inputs of the shape it declares).

    Latency: warm-up, then timed batch-1 runs interleaved across all inputs in a random order per
    round, so drift hits them alike; p50/p90/p95/p99, mean, std and a bootstrap interval of the
    median. Accuracy: top-1 and per-class recall on the test split, the drop vs the canonical
    model with a paired bootstrap interval, McNemar's p and top-1 agreement. A detection model:
    mAP@0.5 and mAP@[.5:.95], the mAP@0.5 drop vs the canonical model with a paired bootstrap
    interval over frames, and its post-processing time (decode, NMS) measured apart from the
    model's, with the speedup over PyTorch eager end to end.

    Example: factory bench models/id-docs bundles/id-docs --out reports/bench
    """
    from .report import markdown, write_report
    from .report import save_baseline as write_baseline
    from .run import run_bench

    report = run_bench(
        inputs,
        data=data,
        seconds=seconds,
        rounds=rounds,
        warmup=warmup,
        threads=threads,
        input_shape=input_shape,
        pubkey=pubkey,
        accuracy=not no_accuracy,
    )
    if out:
        write_report(report, out)
    if save_baseline:
        write_baseline(report, save_baseline)
    click.echo(json.dumps(report, indent=2) if as_json else markdown(report))


@click.command("gate")
@click.option(
    "--candidate",
    required=True,
    type=click.Path(exists=True),
    help="Benchmark report of the change (report.json or its folder).",
)
@click.option(
    "--baseline",
    required=True,
    type=click.Path(),
    help="Baseline folder from `bench --save-baseline` (or a report.json).",
)
@click.option(
    "--policy",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Gate policy YAML (see configs/gates.yaml).",
)
@click.option(
    "--remeasure",
    is_flag=True,
    help="Re-run both sides in one interleaved run on this host instead of trusting stored latencies.",
)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the verdict as JSON.")
@click.option(
    "--record-missing-baseline",
    is_flag=True,
    help="If BASELINE does not exist yet, save the candidate as the baseline and pass.",
)
def gate_cmd(candidate, baseline, policy, remeasure, out, record_missing_baseline) -> None:
    """Fail (exit 1) when the candidate regressed against the baseline; exit 0 when it did not.

    \b
    latency   regression when the interval of the candidate/baseline latency ratio lies wholly
              above 1 + tolerance. With --remeasure: the median of per-round ratios of one
              interleaved run, moving-block bootstrap over rounds plus the session spread;
              without: the ratio of stored medians, widened by the spread between runs
    accuracy  non-inferiority: pass when the upper end of Tango's paired interval of the top-1
              drop is <= max_drop_pt, fail when its lower end is above it; otherwise the test
              split cannot tell (accuracy.inconclusive: fail | pass says what that means);
              detection: the same rule on the mAP@0.5 drop, paired bootstrap over the frames
    budgets   the candidate bundle's target-profile budgets (p95 latency, size), a top-1 floor
    Prints one line per check with the measured value, interval and reason. Reports of different
    models or datasets, or a policy with a missing key, are usage errors (exit 2).

    Example: factory gate --candidate reports/bench --baseline baselines/main.json --policy configs/gates.yaml
    """
    from .._io import write_json
    from ..errors import GateFailure
    from .gate import run_gate

    verdict = run_gate(candidate, baseline, policy, remeasure_both=remeasure, record_missing=record_missing_baseline)
    if verdict.get("recorded_baseline"):
        if out:  # pipelines (dvc's gate stage) expect the verdict file on every run, the first one too
            write_json(out, verdict)
        click.echo(f"no baseline at {baseline}: recorded this candidate as the baseline; gate passed trivially")
        return
    for check in verdict["checks"]:
        click.echo(check["text"])
    if out:
        write_json(out, verdict)
    if not verdict["passed"]:
        failed = sum(not c["passed"] for c in verdict["checks"])
        raise GateFailure(f"gate failed: {failed} of {len(verdict['checks'])} checks found a regression")
    click.echo(f"gate passed: {len(verdict['checks'])} checks")
