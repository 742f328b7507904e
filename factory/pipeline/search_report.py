"""The recipe search's report: a Markdown table, a Pareto plot and its MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

from .._io import atomic_dir, write_json

__all__ = ["search_markdown", "write_search_report", "track_search"]


def search_markdown(summary: dict) -> str:
    """The search as a Markdown table with the verdict under it."""
    lines = [
        f"# Recipe search: {summary['model']} for target {summary['target']} ({summary['backend']})",
        "",
        f"Objective: {summary['objective']}; budgets: {summary['budgets']}. "
        f"{summary['counts']['measured']} candidates measured together ({summary['bench_seconds']:g} s, interleaved); "
        f"{summary['counts']['from_cache']} came from the cache; search took {summary['seconds']:g} s.",
        "",
        f"| candidate | status | {_quality_name(summary)} | loss pt [95% interval] | accuracy verdict | agreement | "
        "p50 ms | p95 ms | "
        "speedup vs fp32 | size MB | MACs (M) | pareto | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["candidates"]:
        if r.get("p50_ms") is None:
            lines.append(f"| {r['label']} | {r['status']} | - | - | - | - | - | - | - | - | - | - | {r['reason']} |")
            continue
        name = f"**{r['label']}** (winner)" if r["winner"] else r["label"]
        speed = f"{r['speedup_vs_reference']:.2f}x" if r.get("speedup_vs_reference") else "-"
        ci = r.get("drop_interval_pt")
        drop = f"{r['loss']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        agreement = f"{r['top1_agreement']:.4f}" if r.get("top1_agreement") is not None else "-"
        words = {"pass": "within the margin", "fail": "beyond the margin", "inconclusive": "cannot tell"}.get(
            r.get("accuracy_verdict"), "-"
        )
        lines.append(
            f"| {name} | {r['status']} | {r['quality']:.4f} | {drop} | {words} | {agreement} | "
            f"{r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {speed} | {r['size_mb']:.2f} | {r['macs'] / 1e6:.1f} | "
            f"{'yes' if r['pareto'] else ''} | {r['reason']} |"
        )
    ref = next((r for r in summary["candidates"] if r.get("reference")), None)
    if ref:
        lines += [
            "",
            f"Speedup: p50 against the runtime's unpruned fp32 export at its fastest measured setting ({ref['label']}, "
            f"{ref['p50_ms']:.3f} ms), all in the same interleaved run.",
        ]
    lines += [
        "",
        "Accuracy: the loss against the canonical model (top-1 points; mAP@0.5 points for detection; corner "
        "error in % of the diagonal for document localisation) is judged as a non-inferiority test (Tango's "
        "score interval over the paired test images; a paired bootstrap interval for the task metrics): within "
        "the margin when the interval's upper end is, beyond it when its lower end is, and 'cannot tell' (not "
        "feasible) otherwise.",
    ]
    lines += ["", summary["verdict"], ""]
    return "\n".join(lines)


def _quality_name(summary: dict) -> str:
    return next((r["quality_name"] for r in summary["candidates"] if r.get("quality_name")), "top-1")


def _plot(rows: list[dict], path: Path, title: str) -> None:
    from .._deps import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 5))
    measured = [r for r in rows if r.get("p50_ms") is not None]
    for status, color, z in (("rejected", "#bbbbbb", 2), ("feasible", "#1f77b4", 3)):
        pts = [r for r in measured if r["status"] == status and not r["winner"]]
        if pts:
            ax.scatter(
                [r["p50_ms"] for r in pts],
                [r["loss"] for r in pts],
                s=[30 + 25 * r["size_mb"] for r in pts],
                c=color,
                marker="o",
                alpha=0.7,
                edgecolors="k",
                linewidths=0.5,
                zorder=z,
                label=f"{status} ({len(pts)})",
            )
    front = sorted((r for r in measured if r.get("pareto")), key=lambda r: r["p50_ms"])
    if len(front) > 1:
        ax.plot(
            [r["p50_ms"] for r in front],
            [r["loss"] for r in front],
            "--",
            c="#2ca02c",
            zorder=4,
            label="Pareto front",
        )
    for r in measured:  # label only what a reader looks for: the front, the winner and the fp32 reference
        if r["winner"] or r.get("pareto") or r.get("reference"):
            tag = " (winner)" if r["winner"] else " (fp32 reference)" if r.get("reference") else ""
            ax.annotate(
                r["label"] + tag,
                (r["p50_ms"], r["loss"]),
                textcoords="offset points",
                xytext=(6, -14) if tag == " (fp32 reference)" else (6, 8),
                fontsize=8,
                zorder=6,
            )
        if r["winner"]:
            ax.scatter(
                [r["p50_ms"]],
                [r["loss"]],
                s=260,
                c="#d62728",
                marker="*",
                edgecolors="k",
                zorder=5,
                label="winner",
            )
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("p50 latency, ms (interleaved, same run)")
    name = next((r["quality_name"] for r in measured if r.get("quality_name")), "top-1")
    ax.set_ylabel(f"{name} loss vs canonical, points")
    ax.set_title(title + "  (marker area ~ size in MB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_search_report(summary: dict, folder: Path) -> Path:
    """``folder/search.json``, ``search.md`` and ``pareto.png``, written atomically."""
    with atomic_dir(folder) as tmp:
        write_json(tmp / "search.json", summary)
        (tmp / "search.md").write_text(search_markdown(summary))
        _plot(summary["candidates"], tmp / "pareto.png", f"{summary['model']} / {summary['target']}")
    return folder


def track_search(summary: dict, train_run: str | None) -> None:
    """One MLflow run for the search with a child run per candidate (the winner is published apart)."""
    import logging
    import os

    import mlflow

    from ..train.tracking import setup_experiment

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    setup_experiment("factory")
    parent_tags = {"factory.stage": "search", "factory.target": summary["target"]}
    if train_run:
        parent_tags["mlflow.parentRunId"] = train_run
    with mlflow.start_run(run_name=f"search-{summary['target']}", tags=parent_tags):
        mlflow.log_params({"objective": summary["objective"], "space": json.dumps(summary["space"])[:500]})
        mlflow.log_dict(summary, "search.json")
        for r in summary["candidates"]:
            with mlflow.start_run(
                run_name=r["label"][:200],
                nested=True,
                tags={"factory.stage": "search-candidate", "factory.status": r["status"]},
            ):
                mlflow.log_params({k: str(v)[:250] for k, v in r["overrides"].items()})
                metrics = {
                    k: r[k]
                    for k in (
                        "top1",
                        "accuracy_drop_pt",
                        "top1_agreement",
                        "quality",
                        "loss",
                        "p50_ms",
                        "p95_ms",
                        "size_mb",
                    )
                    if r.get(k) is not None
                }
                if metrics:
                    mlflow.log_metrics(metrics)
