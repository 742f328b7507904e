"""Benchmark reports: JSON for machines, a Markdown table for CI comments, PNG plots for people."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import progress
from .._io import atomic_dir, atomic_write, read_json, write_json
from ..errors import InputError
from ..tasks import quality_of

__all__ = ["REPORT_SCHEMA", "assemble", "markdown", "write_report", "load_report", "save_baseline"]

REPORT_SCHEMA = "factory.bench/1"


def assemble(artifacts, latency: dict, accuracy: dict) -> dict:
    """The report dict: one row per artifact with its latency and accuracy, plus the run's settings."""
    rows = []
    for a in artifacts:
        rows.append(
            {
                "id": a.id,
                "kind": a.kind,
                "path": a.path,
                "identity": a.identity,
                "runtime": a.runtime,
                "size_bytes": a.size_bytes,
                "macs": a.extra.get("macs"),
                "note": a.extra.get("note"),
                "budgets": a.budgets,
                "latency": latency["artifacts"][a.id],
                "accuracy": accuracy.get(a.id, {"skipped": "not measured"}),
            }
        )
    eager = next((r for r in rows if r["kind"] == "canonical"), None)
    for r in rows:
        r["speedup_vs_pytorch_eager"] = (eager["latency"]["p50_ms"] / r["latency"]["p50_ms"]) if eager else None
        if eager and "end_to_end_p50_ms" in r["latency"] and "end_to_end_p50_ms" in eager["latency"]:
            # a task model's answer includes its post-processing (decode, NMS): compared end to end
            r["speedup_vs_pytorch_eager_end_to_end"] = (
                eager["latency"]["end_to_end_p50_ms"] / r["latency"]["end_to_end_p50_ms"]
            )
    settings = {k: v for k, v in latency.items() if k != "artifacts"}
    return {
        "schema": REPORT_SCHEMA,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "artifacts": rows,
    }


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def markdown(report: dict) -> str:
    """The report as a Markdown table with the host line under it."""
    conf = f"{report['settings'].get('confidence', 0.95):.0%}"
    lines = [
        f"| artifact | backend | precision | top-1 | drop pt [{conf} interval] | agreement | "
        f"p50 ms [{conf} interval] | p95 ms | size MB | speedup vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["artifacts"]:
        acc, lat = r["accuracy"], r["latency"]
        top1 = (
            f"{acc['top1']:.4f}"
            if "top1" in acc
            else f"mAP@0.5 {acc['map50']:.4f}"
            if "map50" in acc
            else f"corner error {acc['corner_error_pct']:.2f}%"
            if "corner_error_pct" in acc
            else "-"
        )
        vs = acc.get("vs_canonical") or {}
        q = quality_of(vs)
        drop = (
            f"{acc['drop_pt']:+.2f} [{acc['drop_ci_pt'][0]:+.2f}, {acc['drop_ci_pt'][1]:+.2f}]"
            if "drop_pt" in acc
            else f"{vs[q.loss]:+.2f} [{vs[q.interval][0]:+.2f}, {vs[q.interval][1]:+.2f}]"
            if q.interval and q.loss in vs
            else "-"
        )
        agree = f"{acc['agreement']:.4f}" if "agreement" in acc else "-"
        speed = f"{r['speedup_vs_pytorch_eager']:.2f}x" if r["speedup_vs_pytorch_eager"] else "-"
        if r.get("speedup_vs_pytorch_eager_end_to_end"):
            e2e, post = r["speedup_vs_pytorch_eager_end_to_end"], lat["postprocess_p50_ms"]
            speed += f" ({e2e:.2f}x with {post:.3f} ms post-processing)"
        lines.append(
            f"| {r['id']} | {r['runtime']['backend']} | {r['runtime']['precision']} | {top1} | {drop} | {agree} | "
            f"{lat['p50_ms']:.3f} {_fmt_ci(lat['median_ci'])} | {lat['p95_ms']:.3f} | {r['size_bytes'] / 1e6:.2f} | "
            f"{speed} |"
        )
    env = report["settings"]["environment"]
    host = env["host"]
    lines += [
        "",
        f"{report['settings']['rounds']} interleaved rounds in {report['settings']['seconds']:g} s at batch 1 on "
        f"{host['cpu']} ({host['cores']} cores; VNNI {'yes' if host['vnni'] else 'no'}, AVX-512 "
        f"{'yes' if host['avx512'] else 'no'}); "
        f"load average {env['load_average_before']} -> {env['load_average']}; {', '.join(env['runtimes'])}.",
        "Drop: Tango's score interval over the paired test images; p50: block-bootstrap interval of the median.",
    ]
    lines += [f"{r['id']}: {r['note']}." for r in report["artifacts"] if r.get("note")]
    return "\n".join(lines)


def _plots(report: dict, folder: Path) -> None:
    from .._deps import pyplot

    plt = pyplot()

    rows = report["artifacts"]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 2), 4))
    data = [np.asarray(r["latency"]["samples_ms"]) for r in rows]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(rows) + 1), [r["id"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("latency, ms (batch 1)")
    ax.set_title("latency distribution (interleaved; whiskers 1.5 IQR)")
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if "top1" in r["accuracy"]:
            ax.scatter(r["latency"]["p50_ms"], 100 * r["accuracy"]["top1"], s=40 + 6 * r["size_bytes"] / 1e6)
            ax.annotate(
                r["id"],
                (r["latency"]["p50_ms"], 100 * r["accuracy"]["top1"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xlabel("p50 latency, ms")
    ax.set_ylabel("test top-1, %")
    ax.set_title("accuracy vs latency (marker size ~ artifact size)")
    fig.tight_layout()
    fig.savefig(folder / "accuracy_vs_latency.png", dpi=100)
    plt.close(fig)


def write_report(report: dict, out: str | Path) -> Path:
    """``out/report.json``, ``report.md`` and the two plots, written atomically (on a device install,
    without matplotlib, the plots are left out and that is said)."""
    from ..errors import MissingDependencyError

    with atomic_dir(out) as tmp:
        write_json(tmp / "report.json", report)
        atomic_write(tmp / "report.md", markdown(report) + "\n")
        try:
            _plots(report, tmp)
        except MissingDependencyError as exc:
            progress.info(f"no plots: {exc}")
    return Path(out)


def save_baseline(report: dict, dest: str | Path) -> Path:
    """A self-contained baseline folder: report.json plus a copy of every artifact it measured, so
    `factory gate --remeasure` can run the baseline again next to a candidate, whatever happened to
    the original files (a rebuild overwrites bundles of the same version)."""
    import copy
    import shutil

    report = copy.deepcopy(report)
    with atomic_dir(dest) as tmp:
        for i, row in enumerate(report["artifacts"]):
            src = Path(row["path"])
            target = (
                tmp
                / "artifacts"
                / f"{i:02d}-{''.join(ch if ch.isalnum() or ch in '-_.@' else '_' for ch in row['id'])}"
            )
            if src.is_dir():
                shutil.copytree(src, target)
            else:
                target.mkdir(parents=True)
                for f in [src, src.with_suffix(".bin")] if src.suffix == ".xml" else [src]:
                    shutil.copy2(f, target / f.name)
                target = target / src.name
            row["path"] = str(Path(dest).resolve() / target.relative_to(tmp))
        write_json(tmp / "report.json", report)
    return Path(dest)


def load_report(path: str | Path) -> dict:
    """Load a report (a report.json or the folder holding one); anything else is a usage error."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise InputError(
            f"benchmark report {path} does not exist", hint="create one with `factory bench ... --out DIR`"
        )
    try:
        report = read_json(path)
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        raise InputError(f"{path} is not a factory benchmark report (schema {REPORT_SCHEMA})")
    return report
