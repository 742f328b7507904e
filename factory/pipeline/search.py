"""Recipe search: build every candidate recipe of a target, measure them together, pick the best.

The target profile's ``search:`` section lists the space as override keys with candidate values
(``recipe.precision: [fp32, int8-static]``, ``recipe.pruning: [none, structured:0.5]``,
``runtime.threads: [1, 2]``...). Each combination is built like ``factory build`` would (cached by
a hash of canonical weights, resolved recipe and toolchain, so a repeated search rebuilds nothing),
validated against the canonical model, then all candidates are benchmarked in one interleaved run.
The objective (lowest p50 or p95 latency, or smallest size) picks among the candidates that meet
every budget; the winner is published like any build (:mod:`factory.pipeline.publish`), with the
whole search in its lineage. Candidates that differ only in ``runtime.threads`` share one build
(threads do not change the artifact) and are re-signed with their own runtime options.

Steps: :func:`plan_search` -> :func:`build_candidates` -> :func:`benchmark_candidates` ->
:func:`rank` -> report -> :func:`publish_winner`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, progress
from .._io import canonical_json, read_json, write_json
from ..bench.budgets import budgets_for, check_budgets, failed, judge, parity_evidence, task_quality
from ..bundle.manifest import Manifest, bundle_dir, copy_resigned, resolve_version
from ..bundle.signing import load_private_key
from ..config import load_config
from ..errors import BundleError, ConfigError, ExportError, FactoryError, ValidationError
from ..export.convert import TOOLCHAIN
from ..export.targets import PROFILE_SCHEMA, load_target
from ..export.targets import targets_dir as profiles_folder
from ..lineage import package_versions
from .build import BuildContext, check_resolvable, load_context, make_bundle
from .executor import absolute
from .publish import BuildResult, publish
from .search_report import search_markdown, track_search, write_search_report

__all__ = [
    "Candidate",
    "SearchPlan",
    "expand_space",
    "load_search_config",
    "plan_search",
    "build_candidates",
    "benchmark_candidates",
    "rank",
    "publish_winner",
    "search",
    "search_markdown",
]

RUNTIME_ONLY = ("runtime.threads",)
CANDIDATE_VERSION = "0.0.0-search"  # cached candidates are not releases; the winner gets the real version


@dataclass
class Candidate:
    """One recipe of the space: its overrides, cache keys, status and what was measured."""

    overrides: dict  # dotted key -> value
    key: str = ""
    build_key: str = ""
    status: str = "pending"  # built | cached -> feasible | inconclusive | rejected; or failed | skipped
    from_cache: bool = False
    reason: str = ""
    folder: str | None = None
    manifest: Manifest | None = None
    latency: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)  # the budget checks, with intervals and verdicts
    node: str | None = None  # the cluster node that built it (an executor's), else None

    @property
    def label(self) -> str:
        """Short human name, e.g. ``int8-static structured:0.5 threads=1``."""
        parts = []
        for k, v in self.overrides.items():
            short = k.split(".")[-1]
            parts.append(f"{v}" if short in ("precision", "pruning") else f"{short}={v}")
        return " ".join(parts)


@dataclass
class SearchPlan:
    """Everything a search needs, resolved before any candidate is built."""

    ctx: BuildContext
    profile: dict
    config: dict  # the search section: objective, space, bench_seconds, budget_minutes
    key: object
    root: Path  # the candidates' cache folder
    reference: Candidate  # the runtime's fp32 export of the unpruned model
    candidates: list[Candidate]
    targets_dir: str | Path | None
    cache_dir: Path
    started: float
    spec: dict = field(default_factory=dict)  # what a worker needs to plan the same search (see executor)


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
    """Every distinct combination of the space's values (quantization knobs dropped for float precisions)."""
    if not space or any(not isinstance(v, list) or not v for v in space.values()):
        raise ConfigError(
            f"{profile_path}: search.space is empty or has a key without candidate values",
            hint="list values per key, e.g. recipe.precision: [fp32, int8-static]",
        )
    keys = list(space)
    seen, out = set(), []
    for combo in itertools.product(*(space[k] for k in keys)):
        ov = dict(zip(keys, combo, strict=True))
        if ov.get("recipe.precision", "fp32") in ("fp32", "fp16"):  # quantization knobs do not apply
            ov = {k: v for k, v in ov.items() if not k.startswith("recipe.quantization.")}
        ident = json.dumps(ov, sort_keys=True)
        if ident not in seen:
            seen.add(ident)
            out.append(Candidate(ov))
    return out


def load_search_config(path) -> dict:
    """A search section in its own file (e.g. the main job's reduced space), checked like a profile's."""
    return load_config(path, PROFILE_SCHEMA["search"])


def _key(profile: dict, canonical) -> str:
    ident = {
        "weights": canonical.identity,
        "recipe": profile["recipe"],
        "runtime": profile["runtime"],
        "backend": profile["backend"],
        "toolchain": package_versions(TOOLCHAIN),
        "factory": __version__,
    }
    return hashlib.sha256(canonical_json(ident)).hexdigest()[:20]


def _valid_bundle(folder: Path) -> bool:
    if not (folder / "manifest.json").is_file():
        return False
    try:
        m = Manifest.read(folder)
    except BundleError:
        return False
    return all((folder / n).is_file() and (folder / n).stat().st_size == e["size"] for n, e in m.files.items())


def plan_search(
    model_dir,
    target: str,
    *,
    key_path,
    data=None,
    targets_dir=None,
    cache_dir=".factory/cache",
    search_config: dict | None = None,
    context: BuildContext | None = None,
) -> SearchPlan:
    """Load the model and profile, expand the space, and key every candidate (invalid recipes fail here)."""
    started = time.perf_counter()
    ctx = context or load_context(model_dir, data)
    base = load_target(target, targets_dir)
    check_resolvable(ctx, base)
    sp = search_config or base["search"]
    cands = expand_space(sp["space"], base["source"])
    threads0 = base["runtime"].get("threads")
    # The yardstick: the runtime's fp32 export of the unpruned model. A candidate whose resolved
    # recipe is the same (whatever keys the space spells out) is the reference; otherwise it is added.
    reference = Candidate(
        {"recipe.precision": "fp32", "recipe.pruning": "none"}
        | ({"runtime.threads": threads0} if "runtime.threads" in sp["space"] else {})
    )
    for c in [reference, *cands]:
        try:
            c.key = _key(load_target(target, targets_dir, _override_args(c.overrides)), ctx.canonical)
            build_ov = {k: v for k, v in c.overrides.items() if k not in RUNTIME_ONLY}
            c.build_key = _key(load_target(target, targets_dir, _override_args(build_ov)), ctx.canonical)
        except ConfigError as exc:
            c.status, c.reason = "failed", f"invalid recipe: {exc.message.splitlines()[0]}"
    if not reference.key or not any(c.key == reference.key for c in cands):
        cands.insert(0, reference)
    else:
        reference = next(c for c in cands if c.key == reference.key)
    root = Path(cache_dir) / "search" / ctx.canonical.card["name"] / base["name"]
    spec = {"model_dir": absolute(model_dir or ctx.canonical.path), "target": target, "key_path": absolute(key_path),
            "data": absolute(data or ctx.dataset.location), "targets_dir": absolute(profiles_folder(targets_dir)),
            "cache_dir": absolute(cache_dir), "search_config": search_config}  # fmt: skip
    return SearchPlan(
        ctx, base, sp, load_private_key(key_path), root, reference, cands, targets_dir, Path(cache_dir), started, spec
    )


def build_remote(spec: dict, key: str) -> dict:
    """On a worker: plan the same search and build the candidate with cache key ``key`` into the shared cache."""
    plan = plan_search(spec["model_dir"], spec["target"], key_path=spec["key_path"], data=spec["data"],
                       targets_dir=spec["targets_dir"], cache_dir=spec["cache_dir"],
                       search_config=spec["search_config"])  # fmt: skip
    cand = next(c for c in plan.candidates if c.key == key)
    _build_one(plan, cand)
    return {"status": cand.status, "folder": cand.folder}


def bench_remote(folders: list[str], seconds: float) -> dict:
    """On a worker (a board of the profile's device class): the interleaved benchmark of the candidates."""
    from ..bench.run import run_bench

    return run_bench(folders, seconds=seconds, accuracy=False)


def _build_one(plan: SearchPlan, cand: Candidate) -> None:
    folder = plan.root / cand.key
    if _valid_bundle(folder):
        cand.status, cand.folder = "cached", str(folder)
        return
    build_dir = plan.root / "builds" / cand.build_key
    if not _valid_bundle(build_dir):
        build_ov = {k: v for k, v in cand.overrides.items() if k not in RUNTIME_ONLY}
        profile = load_target(plan.profile["name"], plan.targets_dir, _override_args(build_ov))
        make_bundle(plan.ctx, profile, build_dir, plan.key, CANDIDATE_VERSION, plan.cache_dir)
    runtime = {k.split(".", 1)[1]: v for k, v in cand.overrides.items() if k in RUNTIME_ONLY}

    def with_runtime(m: Manifest) -> None:
        m.runtime["options"] = {**m.runtime["options"], **runtime}
        m.latency["threads"] = m.runtime["options"].get("threads")
        m.latency["note"] = "quick probe of the build with the original runtime options; see the search benchmark"

    copy_resigned(build_dir, folder, plan.key, with_runtime)
    cand.status, cand.folder = "built", str(folder)


def _build_on(executor, plan: SearchPlan, todo: list[Candidate]) -> None:
    """Every pending candidate as a task of ``executor`` (Ray): the same builds, into the same cache."""
    progress.info(f"search {plan.profile['name']}: {len(todo)} candidate(s) as {executor.name} tasks")
    for c, o in zip(todo, executor.map(build_remote, [(plan.spec, c.key) for c in todo], what="candidate build"),
                    strict=True):  # fmt: skip
        if o.error:
            c.status, c.reason = "failed", o.error
            continue
        c.status, c.folder, c.node = o.value["status"], o.value["folder"], (o.node or {}).get("node_id")
        try:
            c.manifest = Manifest.read(Path(c.folder))
        except BundleError as exc:  # the worker wrote where this process cannot read: not a shared cache
            c.status, c.reason = "failed", f"{exc.message} (is --cache-dir on a filesystem every node shares?)"


def build_candidates(plan: SearchPlan, budget_minutes: float, executor=None) -> list[Candidate]:
    """Build (or take from the cache) every pending candidate; return those that can be measured."""
    todo = [c for c in plan.candidates if c.status == "pending"]
    if executor is not None and executor.name != "local" and todo:
        _build_on(executor, plan, todo)
        todo = []
    with progress.bar(f"search {plan.profile['name']}: building", len(todo)) as tick:
        for i, c in enumerate(todo):
            if (time.perf_counter() - plan.started) / 60 > budget_minutes and not _valid_bundle(plan.root / c.key):
                c.status, c.reason = "skipped", f"--budget-minutes {budget_minutes:g} reached"
                tick(1)
                continue
            progress.info(f"[{i + 1}/{len(todo)}] {c.label}")
            try:
                _build_one(plan, c)
                c.manifest = Manifest.read(Path(c.folder))
            except (ExportError, ValidationError) as exc:
                c.status, c.reason = "failed", str(exc).splitlines()[0][:300]
            except FactoryError as exc:
                if exc.exit_code == 2 and not isinstance(exc, ConfigError):
                    raise  # a broken model or dataset is not a candidate's fault
                c.status, c.reason = "failed", str(exc).splitlines()[0][:300]
            except Exception as exc:  # noqa: BLE001 - an unexpected failure of one candidate; the others go on
                c.status, c.reason = (
                    "failed",
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                )
            tick(1)
    for c in plan.candidates:
        c.from_cache = c.status == "cached"
    measured = [c for c in plan.candidates if c.status in ("built", "cached")]
    if not measured:
        raise ValidationError(
            f"search for {plan.profile['name']}: no candidate could be built",
            hint="; ".join(f"{c.label}: {c.reason}" for c in plan.candidates)[:800],
        )
    return measured


def benchmark_candidates(
    measured: list[Candidate], root: Path, seconds: float, remeasure: bool, executor=None, device_class=None
) -> dict:
    """All candidates in one interleaved latency run (reused from the cache when nothing changed); on Ray
    with a ``device_class``, on a node of that class (the manifest records which node, and its facts)."""
    from ..bench.run import run_bench

    ident = hashlib.sha256(canonical_json({"keys": sorted(c.key for c in measured), "seconds": seconds})).hexdigest()[
        :20
    ]
    cached = root / f"bench-{ident}.json"
    if cached.is_file() and not remeasure:
        progress.info(f"benchmark of these {len(measured)} candidates from cache ({cached.name})")
        bench = read_json(cached) | {"cached": True}
    else:
        progress.info(f"benchmarking {len(measured)} candidates together, interleaved, for {seconds:g} s")
        node = None
        if executor is not None and executor.name != "local" and device_class:
            resource = {f"device:{device_class}": 1}
            items = [([c.folder for c in measured], seconds)]
            (o,) = executor.map(bench_remote, items, resources=resource, what=f"benchmark on a {device_class}")
            if o.error:
                raise ValidationError(
                    f"the benchmark on a {device_class} node failed: {o.error}",
                    hint=f"a node must carry the resource device:{device_class} (docs: Scale out on Ray)",
                )
            report, node = o.value, o.node | {"device_class": device_class}
        else:
            report = run_bench([c.folder for c in measured], seconds=seconds, accuracy=False)
        by_path = {a["path"]: a for a in report["artifacts"]}
        bench = {
            "settings": report["settings"],
            "latency": {
                c.key: {k: v for k, v in by_path[c.folder]["latency"].items() if k != "samples_ms"} for c in measured
            },
        }
        if node:
            bench["node"] = node
        write_json(cached, bench)
        bench["cached"] = False
    for c in measured:
        c.latency = bench["latency"][c.key]
    return bench


def _checks(c: Candidate, budgets: dict):
    p = c.manifest.validation["parity"]
    return check_budgets(
        budgets,
        **parity_evidence(p),
        latency_p95_ms=c.latency["p95_ms"],
        size_mb=c.manifest.artifact["size_bytes"] / 1e6,
    )


def _exact(c: Candidate) -> bool:
    """The build found the candidate's outputs equal to the canonical model's within the numeric tolerance."""
    return any(ch["check"] == "max_abs_diff" and ch["passed"] for ch in c.manifest.validation.get("checks", []))


def _strict(c: Candidate) -> bool:
    """int8 or pruned: accuracy is what the interval must show."""
    rec = c.manifest.recipe
    pruning = rec.get("pruning_applied") or rec.get("pruning") or {}
    return str(rec.get("precision", "")).startswith("int8") or pruning.get("method", "none") != "none"


def _loss(c: Candidate) -> float:
    """The candidate's loss against the canonical model by its task's figure (top-1 or mAP points...)."""
    return task_quality(c.manifest.validation["parity"])["loss"]


def _objective(c: Candidate, objective: str) -> tuple:
    drop = _loss(c)
    size = c.manifest.artifact["size_bytes"]
    if objective == "size":
        return (size, c.latency["p50_ms"], drop)
    stat = "p95_ms" if objective == "p95_latency" else "p50_ms"
    return (c.latency[stat], drop, size)


def _pareto(cands: list[Candidate]) -> set[str]:
    pts = {c.key: (c.latency["p50_ms"], _loss(c)) for c in cands}
    return {
        k
        for k, (lat, d) in pts.items()
        if not any((l2 <= lat and d2 <= d) and (l2 < lat or d2 < d) for k2, (l2, d2) in pts.items() if k2 != k)
    }


def _row(c: Candidate, winner, ref, front: set[str]) -> dict:
    row = {
        "label": c.label,
        "overrides": c.overrides,
        "key": c.key,
        "status": c.status,
        "reason": c.reason,
        "winner": c is winner,
        "reference": c is ref,
    }
    if c.node:
        row["built_on"] = c.node
    if c.latency:
        p, a = c.manifest.validation["parity"], c.manifest.artifact
        q = task_quality(p)
        row |= {
            "quality_name": q["name"],
            "quality": q["value"],
            "loss": q["loss"],
            "top1": p.get("top1"),
            "accuracy_drop_pt": p.get("accuracy_drop_pt"),
            "top1_agreement": p.get("top1_agreement"),
            "p50_ms": c.latency["p50_ms"],
            "p95_ms": c.latency["p95_ms"],
            "median_ci": c.latency.get("median_ci"),
            "size_mb": a["size_bytes"] / 1e6,
            "macs": a["macs"],
            "precision": c.manifest.recipe["precision"],
            "pareto": c.key in front,
            "speedup_vs_reference": (ref.latency["p50_ms"] / c.latency["p50_ms"]) if ref and ref.latency else None,
        }
        drop = next((ch for ch in c.checks if ch["check"] == q["check"]), None)
        if drop:
            row |= {
                "drop_interval_pt": drop["interval"],
                "accuracy_verdict": drop["verdict"],
                "accuracy_why": drop["why"],
            }
    return row


def _repaired(c: Candidate) -> bool:
    """Whether the candidate's int8 recipe was changed by an accuracy repair (a fix or layers kept in float)."""
    repair = (c.manifest.recipe.get("quantization_applied") or {}).get("repair") or {}
    return repair.get("chosen") not in (None, "as configured")


def rank(plan: SearchPlan, measured: list[Candidate], bench: dict) -> tuple[Candidate | None, dict]:
    """Judge every measured candidate by the budgets, pick the winner by the objective; the summary."""
    budgets, objective = plan.profile["budgets"], plan.config["objective"]
    # The yardstick at its best runtime setting: the fastest measured candidate that is the unpruned fp32 export
    same = plan.reference.build_key
    exports = [c for c in measured if (c is plan.reference or (same and c.build_key == same)) and c.latency]
    ref = min(exports, key=lambda c: c.latency["p50_ms"]) if exports else None
    feasible = []
    for c in measured:
        checks = _checks(c, budgets)
        c.checks = [ch.to_dict() for ch in checks]
        # an inconclusive accuracy verdict (the test split cannot show the candidate within its margin) is
        # feasible only as the profile's budgets.on_inconclusive says (by default: an exact fp32/fp16 export)
        verdict = judge(checks, budgets.get("on_inconclusive", "auto"), exact=_exact(c), strict=_strict(c))
        missed = [] if verdict["passed"] else failed(checks)
        c.reason = verdict["why"] or "; ".join(f"{m.check} {m.why}" for m in missed)
        c.status = (
            "feasible" if not missed else "rejected" if any(m.verdict == "fail" for m in missed) else "inconclusive"
        )
        if not missed and ref is not None and _repaired(c) and c.latency["p50_ms"] >= ref.latency["p50_ms"]:
            c.status = "rejected"  # a repair kept layers in float and lost the point of int8
            c.reason = (
                f"not worth it: the repaired int8 ({c.latency['p50_ms']:.3f} ms) is not faster than the fp32 export "
                f"({ref.label}, {ref.latency['p50_ms']:.3f} ms)"
            )
            continue
        if not missed:
            feasible.append(c)
    winner = min(feasible, key=lambda c: _objective(c, objective)) if feasible else None
    front = _pareto(measured)
    rows = [_row(c, winner, ref, front) for c in plan.candidates]
    counts = {
        s: sum(c.status == s for c in plan.candidates)
        for s in ("feasible", "inconclusive", "rejected", "failed", "skipped")
    }
    counts |= {"measured": len(measured), "from_cache": sum(c.from_cache for c in measured)}
    card = plan.ctx.canonical.card
    summary = {
        "model": card["name"],
        "target": plan.profile["name"],
        "backend": plan.profile["backend"],
        "objective": objective,
        "budgets": budgets_for(budgets, card.get("task") or "classification"),
        "space": plan.config["space"],
        "bench_seconds": plan.config["bench_seconds"],
        "benchmark_cached": bench["cached"],
        "environment": bench["settings"]["environment"],
        "counts": counts,
        "candidates": rows,
        "seconds": round(time.perf_counter() - plan.started, 1),
    }
    if winner is None:

        def distance(c: Candidate) -> float:
            return sum(abs(m.value - m.limit) / max(abs(m.limit), 1e-9) for m in failed(_checks(c, budgets)))

        closest = min(measured, key=distance)
        summary["verdict"] = f"No candidate meets the budgets; closest: {closest.label} ({closest.reason})."
    else:
        speed = (
            f", {ref.latency['p50_ms'] / winner.latency['p50_ms']:.2f}x faster (p50) than {ref.label}" if ref else ""
        )
        summary["verdict"] = (
            f"Winner: {winner.label}: p50 {winner.latency['p50_ms']:.3f} ms, "
            f"{task_quality(winner.manifest.validation['parity'])['words']} {_loss(winner):+.2f} pt{speed}."
        )
    return winner, summary


def publish_winner(
    plan: SearchPlan, winner: Candidate, summary: dict, bench: dict, *, out_root, version: str | None, track: bool
) -> BuildResult:
    """The winner becomes the target's bundle: the search's latency and verdict in its manifest, then published."""
    card = plan.ctx.canonical.card
    version = resolve_version(Path(out_root), card["name"], plan.ctx.canonical.identity, version)
    dest = bundle_dir(Path(out_root), card["name"], version, plan.profile["name"])

    def finish(m: Manifest) -> None:
        m.version = version
        m.latency = {
            **m.latency,
            **{k: winner.latency[k] for k in ("p50_ms", "p95_ms")},
            "source": "search benchmark (interleaved, same run as every candidate)",
            "median_ci": winner.latency.get("median_ci"),
            "host": bench["settings"]["environment"]["host"],
            **({"node": bench["node"]} if bench.get("node") else {}),  # the device-lab node that measured it
        }
        m.lineage["search"] = {
            k: summary[k] for k in ("objective", "space", "budgets", "bench_seconds", "counts", "verdict")
        } | {
            "winner": winner.key,
            "candidates": [
                {
                    k: r.get(k)
                    for k in (
                        "label",
                        "status",
                        "reason",
                        "quality_name",
                        "quality",
                        "loss",
                        "top1",
                        "accuracy_drop_pt",
                        "drop_interval_pt",
                        "accuracy_verdict",
                        "p50_ms",
                        "p95_ms",
                        "speedup_vs_reference",
                        "size_mb",
                        "pareto",
                        "winner",
                        "reference",
                    )
                }
                for r in summary["candidates"]
            ],
        }

    return publish(Path(winner.folder), dest, plan.key, track=track, edit=finish)


def search(
    model_dir,
    target: str,
    *,
    key_path,
    data=None,
    out_root="bundles",
    targets_dir=None,
    cache_dir=".factory/cache",
    report_dir="reports/search",
    budget_minutes: float | None = None,
    remeasure: bool = False,
    version: str | None = None,
    track: bool = True,
    search_config: dict | None = None,
    context: BuildContext | None = None,
    executor=None,
) -> tuple[BuildResult, dict]:
    """Search one target's recipe space; return the published winner and the search summary.

    With a Ray ``executor`` (:mod:`.executor`), candidates are built as Ray tasks and, when the profile
    names a ``device_class``, measured on a node of that class. Raises ValidationError (exit 1) when no
    candidate meets the budgets; the report is written either way.
    """
    plan = plan_search(
        model_dir,
        target,
        key_path=key_path,
        data=data,
        targets_dir=targets_dir,
        cache_dir=cache_dir,
        search_config=search_config,
        context=context,
    )
    budget = budget_minutes if budget_minutes is not None else plan.config["budget_minutes"]
    measured = build_candidates(plan, budget, executor)
    bench = benchmark_candidates(measured, plan.root, plan.config["bench_seconds"], remeasure, executor,
                                 plan.profile.get("device_class"))  # fmt: skip
    winner, summary = rank(plan, measured, bench)
    summary["executor"] = executor.name if executor is not None else "local"
    if bench.get("node"):
        summary["bench_node"] = bench["node"]
    rdir = write_search_report(summary, Path(report_dir) / plan.profile["name"])
    summary["report"] = str(rdir)
    if track:
        track_search(summary, (plan.ctx.canonical.card["lineage"].get("mlflow") or {}).get("run_id"))
    if winner is None:
        raise ValidationError(
            f"search for {target}: {summary['verdict']}", hint=f"see {rdir}/search.md; relax budgets or widen the space"
        )
    return publish_winner(plan, winner, summary, bench, out_root=out_root, version=version, track=track), summary
