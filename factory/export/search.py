"""Recipe search: build every candidate recipe of a target, measure them together, pick the best.

The target profile's ``search:`` section lists the space as override keys with candidate values
(``recipe.precision: [fp32, int8-static]``, ``recipe.pruning: [none, structured:0.5]``,
``runtime.threads: [1, 2]``...). Each combination is built like ``factory build`` would (cached by
a hash of canonical weights, resolved recipe and toolchain, so a repeated search rebuilds nothing),
validated against the canonical model, then all candidates are benchmarked in one interleaved run.
The objective (lowest p50 or p95 latency, or smallest size) picks among the candidates that meet
every budget; the winner becomes the target's bundle, with the whole search in its lineage.
Candidates that differ only in ``runtime.threads`` share one build (threads do not change the
artifact) and are re-signed with their own runtime options.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, progress
from .._io import atomic_dir, canonical_json, read_json, write_json
from ..errors import ConfigError, ExportError, FactoryError, ValidationError
from ..lineage import package_versions
from .targets import load_target

__all__ = ["Candidate", "expand_space", "search", "search_markdown", "load_search_config"]

RUNTIME_ONLY = ("runtime.threads",)


@dataclass
class Candidate:
    overrides: dict  # dotted key -> value
    key: str = ""
    build_key: str = ""
    status: str = "pending"  # built | cached -> feasible | rejected; or failed | skipped
    from_cache: bool = False
    reason: str = ""
    folder: str | None = None
    manifest: dict | None = None
    latency: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        parts = []
        for k, v in self.overrides.items():
            short = k.split(".")[-1]
            parts.append(f"{v}" if short in ("precision", "pruning") else f"{short}={v}")
        return " ".join(parts)


def _override_args(overrides: dict) -> tuple[str, ...]:
    out = []
    for k, v in overrides.items():
        if k == "recipe.pruning":
            method, _, ratio = str(v).partition(":")
            out += [f"recipe.pruning.method={method}", f"recipe.pruning.ratio={ratio or 0}"]
        else:
            out.append(f"{k}={v}")
    return tuple(out)


def expand_space(space: dict, profile_path: str) -> list[Candidate]:
    if not space or any(not isinstance(v, list) or not v for v in space.values()):
        raise ConfigError(f"{profile_path}: search.space is empty or has a key without candidate values",
                          hint="list values per key, e.g. recipe.precision: [fp32, int8-static]")
    keys = list(space)
    seen, out = set(), []
    for combo in itertools.product(*(space[k] for k in keys)):
        ov = dict(zip(keys, combo))
        if ov.get("recipe.precision", "fp32") in ("fp32", "fp16"):  # quantization knobs do not apply
            ov = {k: v for k, v in ov.items() if not k.startswith("recipe.quantization.")}
        ident = json.dumps(ov, sort_keys=True)
        if ident not in seen:
            seen.add(ident)
            out.append(Candidate(ov))
    return out


def _key(profile: dict, canonical, extra: dict) -> str:
    ident = {"weights": canonical.card["files"]["weights"]["sha256"], "recipe": profile["recipe"], "runtime": profile["runtime"],
             "backend": profile["backend"], "toolchain": package_versions(["torch", "onnxruntime", "openvino", "nncf", "litert-torch",
                                                                              "ai-edge-litert", "ai-edge-quantizer", "torch-pruning"]),
             "factory": __version__, **extra}
    return hashlib.sha256(canonical_json(ident)).hexdigest()[:20]


def _with_runtime(src: Path, dest: Path, runtime: dict, key) -> dict:
    """Copy a built bundle with other runtime options, re-signed (the artifact is unchanged)."""
    from ..bundle.archive import read_manifest
    from ..bundle.manifest import write_signed

    with atomic_dir(dest) as tmp:
        for f in src.iterdir():
            if f.name not in ("manifest.json", "manifest.sig"):
                shutil.copy2(f, tmp / f.name)
        m = read_manifest(src)
        m["runtime"]["options"] = {**m["runtime"]["options"], **runtime}
        m["latency"]["threads"] = m["runtime"]["options"].get("threads")
        m["latency"]["note"] = "quick probe of the build with the original runtime options; see the search benchmark"
        write_signed(tmp, m, key)
    return m


def _valid_bundle(folder: Path) -> bool:
    from ..bundle.archive import read_manifest
    from ..errors import BundleError

    if not (folder / "manifest.json").is_file():
        return False
    try:
        m = read_manifest(folder)
    except BundleError:
        return False
    return all((folder / n).is_file() and (folder / n).stat().st_size == e["size"] for n, e in m["files"].items())


def _build_candidate(model_dir, target, cand: Candidate, root: Path, *, key_path, key, data, targets_dir, cache_dir) -> None:
    from .build import build

    folder = root / cand.key
    if _valid_bundle(folder):
        cand.status, cand.folder = "cached", str(folder)
        return
    build_dir = root / "builds" / cand.build_key
    if not _valid_bundle(build_dir):
        build_ov = {k: v for k, v in cand.overrides.items() if k not in RUNTIME_ONLY}
        tmp_root = root / "tmp"
        shutil.rmtree(tmp_root, ignore_errors=True)
        result = build(model_dir, target, key_path=key_path, data=data, out_root=tmp_root, targets_dir=targets_dir,
                       overrides=_override_args(build_ov), cache_dir=cache_dir, track=False)
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(build_dir, ignore_errors=True)
        result.folder.replace(build_dir)
        shutil.rmtree(tmp_root, ignore_errors=True)
    runtime = {k.split(".", 1)[1]: v for k, v in cand.overrides.items() if k in RUNTIME_ONLY}
    _with_runtime(build_dir, folder, runtime, key)
    cand.status, cand.folder = "built", str(folder)


def _checks(c: Candidate, budgets: dict) -> list[tuple[str, float, float]]:
    """(check, value, limit) for every budget this candidate misses."""
    p = c.manifest["validation"]["parity"]
    missed = []
    if p["accuracy_drop_pt"] > budgets["max_accuracy_drop_pt"]:
        missed.append(("accuracy_drop_pt", p["accuracy_drop_pt"], budgets["max_accuracy_drop_pt"]))
    if p["top1_agreement"] < budgets["min_top1_agreement"]:
        missed.append(("top1_agreement", p["top1_agreement"], budgets["min_top1_agreement"]))
    if budgets["max_latency_ms"] is not None and c.latency["p95_ms"] > budgets["max_latency_ms"]:
        missed.append(("p95_ms", c.latency["p95_ms"], budgets["max_latency_ms"]))
    size_mb = c.manifest["artifact"]["size_bytes"] / 1e6
    if budgets["max_size_mb"] is not None and size_mb > budgets["max_size_mb"]:
        missed.append(("size_mb", size_mb, budgets["max_size_mb"]))
    return missed


def _objective(c: Candidate, objective: str) -> tuple:
    drop = c.manifest["validation"]["parity"]["accuracy_drop_pt"]
    size = c.manifest["artifact"]["size_bytes"]
    if objective == "size":
        return (size, c.latency["p50_ms"], drop)
    stat = "p95_ms" if objective == "p95_latency" else "p50_ms"
    return (c.latency[stat], drop, size)


def _pareto(cands: list[Candidate]) -> set[str]:
    pts = {c.key: (c.latency["p50_ms"], c.manifest["validation"]["parity"]["accuracy_drop_pt"]) for c in cands}
    return {k for k, (l, d) in pts.items()
            if not any((l2 <= l and d2 <= d) and (l2 < l or d2 < d) for k2, (l2, d2) in pts.items() if k2 != k)}


def _benchmark(cands: list[Candidate], root: Path, seconds: float, remeasure: bool) -> dict:
    from ..bench.commands import run_bench

    ident = hashlib.sha256(canonical_json({"keys": sorted(c.key for c in cands), "seconds": seconds})).hexdigest()[:20]
    cached = root / f"bench-{ident}.json"
    if cached.is_file() and not remeasure:
        progress.info(f"benchmark of these {len(cands)} candidates from cache ({cached.name})")
        return read_json(cached) | {"cached": True}
    progress.info(f"benchmarking {len(cands)} candidates together, interleaved, for {seconds:g} s")
    report = run_bench([c.folder for c in cands], seconds=seconds, accuracy=False)
    by_path = {a["path"]: a for a in report["artifacts"]}
    out = {"settings": report["settings"] | {"environment": report["settings"]["environment"]},
           "latency": {c.key: {k: v for k, v in by_path[c.folder]["latency"].items() if k != "samples_ms"} for c in cands}}
    write_json(cached, out)
    return out | {"cached": False}


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    measured = [r for r in rows if r.get("p50_ms") is not None]
    styles = (("rejected", "#bbbbbb", "o", 2), ("feasible", "#1f77b4", "o", 3))
    for status, color, marker, z in styles:
        pts = [r for r in measured if r["status"] == status and not r["winner"]]
        if pts:
            ax.scatter([r["p50_ms"] for r in pts], [r["accuracy_drop_pt"] for r in pts], s=[30 + 25 * r["size_mb"] for r in pts],
                       c=color, marker=marker, alpha=0.7, edgecolors="k", linewidths=0.5, zorder=z, label=f"{status} ({len(pts)})")
    front = sorted((r for r in measured if r.get("pareto")), key=lambda r: r["p50_ms"])
    if len(front) > 1:
        ax.plot([r["p50_ms"] for r in front], [r["accuracy_drop_pt"] for r in front], "--", c="#2ca02c", zorder=4, label="Pareto front")
    for r in measured:  # label only what a reader looks for: the front, the winner and the fp32 reference
        if r["winner"] or r.get("pareto") or r.get("reference"):
            tag = " (winner)" if r["winner"] else " (fp32 reference)" if r.get("reference") else ""
            ax.annotate(r["label"] + tag, (r["p50_ms"], r["accuracy_drop_pt"]), textcoords="offset points",
                        xytext=(6, -14) if tag == " (fp32 reference)" else (6, 8), fontsize=8, zorder=6)
    for r in measured:
        if r["winner"]:
            ax.scatter([r["p50_ms"]], [r["accuracy_drop_pt"]], s=260, c="#d62728", marker="*", edgecolors="k", zorder=5, label="winner")
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("p50 latency, ms (interleaved, same run)")
    ax.set_ylabel("top-1 drop vs canonical, points")
    ax.set_title(title + "  (marker area ~ size in MB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_markdown(summary: dict) -> str:
    lines = [f"# Recipe search: {summary['model']} for target {summary['target']} ({summary['backend']})", "",
             f"Objective: {summary['objective']}; budgets: {summary['budgets']}. "
             f"{summary['counts']['measured']} candidates measured together ({summary['bench_seconds']:g} s, interleaved); "
             f"{summary['counts']['from_cache']} came from the cache; search took {summary['seconds']:g} s.", "",
             "| candidate | status | top-1 | drop pt | agreement | p50 ms | p95 ms | speedup vs fp32 | size MB | MACs (M) | pareto | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["candidates"]:
        if r.get("p50_ms") is None:
            lines.append(f"| {r['label']} | {r['status']} | - | - | - | - | - | - | - | - | - | {r['reason']} |")
            continue
        name = f"**{r['label']}** (winner)" if r["winner"] else r["label"]
        lines.append(f"| {name} | {r['status']} | {r['top1']:.4f} | {r['accuracy_drop_pt']:+.2f} | {r['top1_agreement']:.4f} | "
                     f"{r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['speedup_vs_reference']:.2f}x | {r['size_mb']:.2f} | {r['macs'] / 1e6:.1f} | "
                     f"{'yes' if r['pareto'] else ''} | {r['reason']} |")
    lines += ["", summary["verdict"], ""]
    return "\n".join(lines)


def load_search_config(path) -> dict:
    """A search section in its own file (e.g. the main job's reduced space), checked like a profile's."""
    from ..config import load_config
    from .targets import PROFILE_SCHEMA

    return load_config(path, PROFILE_SCHEMA["search"])


def search(model_dir, target: str, *, key_path, data=None, out_root="bundles", targets_dir=None, cache_dir=".factory/cache",
           report_dir="reports/search", budget_minutes: float | None = None, remeasure: bool = False, version: str | None = None,
           track: bool = True, search_config: dict | None = None) -> dict:
    from ..bundle.archive import pack, read_manifest
    from ..bundle.manifest import bundle_dir, resolve_version, write_signed
    from ..bundle.signing import load_private_key
    from ..train.canonical import load_canonical

    started = time.perf_counter()
    canonical = load_canonical(model_dir)
    base = load_target(target, targets_dir)
    sp = search_config or base["search"]
    key = load_private_key(key_path)
    cands = expand_space(sp["space"], base["source"])
    threads0 = base["runtime"].get("threads")
    # The yardstick: the runtime's fp32 export of the unpruned model. A candidate whose resolved
    # recipe is the same (whatever keys the space spells out) is the reference; otherwise it is added.
    reference = Candidate({"recipe.precision": "fp32", "recipe.pruning": "none"} | ({"runtime.threads": threads0} if "runtime.threads" in sp["space"] else {}))
    root = Path(cache_dir) / "search" / canonical.card["name"] / base["name"]
    budget = budget_minutes if budget_minutes is not None else sp["budget_minutes"]
    for c in [reference, *cands]:
        try:
            c.key = _key(load_target(target, targets_dir, _override_args(c.overrides)), canonical, {})
            build_ov = {k: v for k, v in c.overrides.items() if k not in RUNTIME_ONLY}
            c.build_key = _key(load_target(target, targets_dir, _override_args(build_ov)), canonical, {})
        except ConfigError as exc:
            c.status, c.reason = "failed", f"invalid recipe: {exc.message.splitlines()[0]}"
    if not reference.key or not any(c.key == reference.key for c in cands):
        cands.insert(0, reference)
    todo = [c for c in cands if c.status == "pending"]
    with progress.bar(f"search {target}: building", len(todo)) as tick:
        for i, c in enumerate(todo):
            if (time.perf_counter() - started) / 60 > budget and not _valid_bundle(root / c.key):
                c.status, c.reason = "skipped", f"--budget-minutes {budget:g} reached"
                tick(1)
                continue
            progress.info(f"[{i + 1}/{len(todo)}] {c.label}")
            try:
                _build_candidate(model_dir, target, c, root, key_path=key_path, key=key, data=data, targets_dir=targets_dir,
                                 cache_dir=cache_dir)
                c.manifest = read_manifest(Path(c.folder))
            except (ExportError, ValidationError) as exc:
                c.status, c.reason = "failed", str(exc).splitlines()[0][:300]
            except FactoryError as exc:
                if exc.exit_code == 2 and not isinstance(exc, ConfigError):
                    raise  # a broken model or dataset is not a candidate's fault
                c.status, c.reason = "failed", str(exc).splitlines()[0][:300]
            tick(1)
    for c in cands:
        c.from_cache = c.status == "cached"
    measured = [c for c in cands if c.status in ("built", "cached")]
    if not measured:
        raise ValidationError(f"search for {target}: no candidate could be built", hint="; ".join(f"{c.label}: {c.reason}" for c in cands)[:800])
    bench = _benchmark(measured, root, sp["bench_seconds"], remeasure)
    for c in measured:
        c.latency = bench["latency"][c.key]
    ref = next((c for c in measured if c.key == reference.key), None)
    front = _pareto(measured)
    feasible = []
    for c in measured:
        missed = _checks(c, base["budgets"])
        c.reason = "; ".join(f"{k} {v:.4g} vs limit {lim:g}" for k, v, lim in missed)
        c.status = "rejected" if missed else "feasible"
        if not missed:
            feasible.append(c)
    winner = min(feasible, key=lambda c: _objective(c, sp["objective"])) if feasible else None
    rows = []
    for c in cands:
        row = {"label": c.label, "overrides": c.overrides, "key": c.key, "status": c.status, "reason": c.reason,
               "winner": c is winner, "reference": c is ref}
        if c.latency:
            p = c.manifest["validation"]["parity"]
            row |= {"top1": p["top1"], "accuracy_drop_pt": p["accuracy_drop_pt"], "top1_agreement": p["top1_agreement"],
                    "p50_ms": c.latency["p50_ms"], "p95_ms": c.latency["p95_ms"], "median_ci": c.latency.get("median_ci"),
                    "size_mb": c.manifest["artifact"]["size_bytes"] / 1e6, "macs": c.manifest["artifact"]["macs"],
                    "precision": c.manifest["recipe"]["precision"], "pareto": c.key in front,
                    "speedup_vs_reference": (ref.latency["p50_ms"] / c.latency["p50_ms"]) if ref else None}
        rows.append(row)
    counts = {s: sum(c.status == s for c in cands) for s in ("feasible", "rejected", "failed", "skipped")}
    counts |= {"measured": len(measured), "from_cache": sum(c.from_cache for c in measured)}
    summary = {"model": canonical.card["name"], "target": base["name"], "backend": base["backend"], "objective": sp["objective"],
               "budgets": base["budgets"], "space": sp["space"], "bench_seconds": sp["bench_seconds"],
               "benchmark_cached": bench["cached"], "environment": bench["settings"]["environment"],
               "counts": counts, "candidates": rows, "seconds": round(time.perf_counter() - started, 1)}
    if winner is None:
        closest = min((c for c in measured), key=lambda c: sum(abs(v - lim) / max(abs(lim), 1e-9) for _, v, lim in _checks(c, base["budgets"])))
        summary["verdict"] = f"No candidate meets the budgets; closest: {closest.label} ({closest.reason})."
    else:
        speed = f", {ref.latency['p50_ms'] / winner.latency['p50_ms']:.2f}x faster (p50) than {ref.label}" if ref else ""
        summary["verdict"] = (f"Winner: {winner.label}: p50 {winner.latency['p50_ms']:.3f} ms, drop "
                              f"{winner.manifest['validation']['parity']['accuracy_drop_pt']:+.2f} pt{speed}.")
    rdir = Path(report_dir) / base["name"]
    with atomic_dir(rdir) as tmp:
        write_json(tmp / "search.json", summary)
        (tmp / "search.md").write_text(search_markdown(summary))
        _plot(rows, tmp / "pareto.png", f"{canonical.card['name']} / {base['name']}")
    summary["report"] = str(rdir)
    if track:
        _track(summary, canonical)
    if winner is None:
        raise ValidationError(f"search for {target}: {summary['verdict']}", hint=f"see {rdir}/search.md; relax budgets or widen the space")
    version = resolve_version(Path(out_root), canonical.card["name"], canonical.card["files"]["weights"]["sha256"], version)
    dest = bundle_dir(Path(out_root), canonical.card["name"], version, base["name"])
    with atomic_dir(dest) as tmp:
        for f in Path(winner.folder).iterdir():
            if f.name not in ("manifest.json", "manifest.sig"):
                shutil.copy2(f, tmp / f.name)
        m = read_manifest(Path(winner.folder))
        m["version"] = version
        m["latency"] = {**m["latency"], **{k: winner.latency[k] for k in ("p50_ms", "p95_ms")}, "source": "search benchmark (interleaved)",
                        "median_ci": winner.latency.get("median_ci"), "host": bench["settings"]["environment"]["host"]}
        m["lineage"]["search"] = {k: summary[k] for k in ("objective", "space", "budgets", "bench_seconds", "counts", "verdict")} | {
            "winner": winner.key, "candidates": [{k: r.get(k) for k in ("label", "status", "reason", "top1", "accuracy_drop_pt",
                                                                          "p50_ms", "p95_ms", "size_mb", "pareto", "winner")} for r in rows]}
        write_signed(tmp, m, key)
    summary["bundle"] = str(dest)
    summary["archive"] = str(pack(dest, dest.parent / f"{base['name']}.tar.gz"))
    summary["manifest"] = m
    return summary


def _track(summary: dict, canonical) -> None:
    """One MLflow run for the search with a child run per candidate."""
    import logging
    import os

    import mlflow

    from ..train.tracking import setup_experiment

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    setup_experiment("factory")
    parent_tags = {"factory.stage": "search", "factory.target": summary["target"]}
    train_run = canonical.card["lineage"].get("mlflow", {}).get("run_id")
    if train_run:
        parent_tags["mlflow.parentRunId"] = train_run
    with mlflow.start_run(run_name=f"search-{summary['target']}", tags=parent_tags):
        mlflow.log_params({"objective": summary["objective"], "space": json.dumps(summary["space"])[:500]})
        mlflow.log_dict(summary, "search.json")
        for r in summary["candidates"]:
            with mlflow.start_run(run_name=r["label"][:200], nested=True, tags={"factory.stage": "search-candidate", "factory.status": r["status"]}):
                mlflow.log_params({k: str(v)[:250] for k, v in r["overrides"].items()})
                metrics = {k: r[k] for k in ("top1", "accuracy_drop_pt", "top1_agreement", "p50_ms", "p95_ms", "size_mb") if r.get(k) is not None}
                if metrics:
                    mlflow.log_metrics(metrics)
