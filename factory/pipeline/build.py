"""``factory build``: canonical model + target profile -> verified, signed bundle.

convert (prune -> export -> quantize -> compile) -> validate parity -> quick latency -> budgets ->
manifest -> publish (sign, pack, MLflow). Every figure is measured and written into the manifest
before a verdict; the profile's budgets decide pass or fail. A failing build still leaves a
complete, signed bundle whose manifest says ``validation.passed: false`` (and the command exits 1);
an *error* leaves nothing behind.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, progress
from .._io import atomic_dir, sha256_file
from ..bench.budgets import WAYS_OUT, budgets_for, check_budgets, judge, parity_evidence, unresolvable
from ..bench.quick import postprocess_latency, quick_latency
from ..bundle.manifest import Manifest, bundle_dir, file_entries, resolve_version
from ..bundle.signing import load_private_key
from ..data.manifest import DatasetManifest, load_manifest
from ..data.splits import load_split, load_split_images
from ..errors import DataError, InputError
from ..export.base import get_backend, stage
from ..export.convert import TOOLCHAIN, Converted, convert
from ..export.targets import load_target
from ..lineage import host_info, package_versions
from ..tasks import Task, get_task
from ..train.canonical import CanonicalModel, load_canonical, onnx_logits
from .publish import BuildResult, publish

__all__ = [
    "BuildContext",
    "BuildResult",
    "Failure",
    "isolated",
    "load_context",
    "check_resolvable",
    "make_bundle",
    "build",
    "build_report",
    "run_batches",
]


@dataclass
class BuildContext:
    """What every build of one canonical model needs, loaded once: the model, its dataset, the
    preprocessed test split and the canonical model's own outputs on it (the parity reference)."""

    canonical: CanonicalModel
    dataset: DatasetManifest
    x_test: np.ndarray
    y_test: np.ndarray  # the task's targets: label indices, or corners (factory.tasks)
    reference: np.ndarray

    @property
    def task(self) -> Task:
        """What the canonical model is for (its card says)."""
        return get_task(self.canonical.task, self.canonical.card["output"])


def load_context(model_dir: str | Path, data: str | None = None) -> BuildContext:
    """Open the canonical model and the dataset it is validated on (``data`` or the card's own)."""
    canonical = load_canonical(model_dir)
    path = data or canonical.card["lineage"].get("dataset_manifest")
    if not path or not Path(path).exists():
        raise DataError(
            f"the evaluation dataset {path!r} of this model is not here",
            hint="pass --data PATH/TO/dataset (the one the model was trained on)",
        )
    dataset = load_manifest(path)
    if dataset.dataset_hash != canonical.card["lineage"]["dataset_hash"]:
        progress.info(
            f"note: dataset {dataset.location} has hash {dataset.dataset_hash[:12]}, "
            f"the model was trained on {canonical.card['lineage']['dataset_hash'][:12]}"
        )
    task = get_task(canonical.task, canonical.card["output"])
    if task.name == "classification":
        x_test, y_test = load_split(dataset, "test", canonical.preprocessing, canonical.labels)
    else:
        x_test, records = load_split_images(dataset, "test", canonical.preprocessing)
        y_test = task.targets(records, canonical.labels)
    return BuildContext(canonical, dataset, x_test, y_test, onnx_logits(canonical.onnx, x_test))


def check_resolvable(ctx: BuildContext, profile: dict) -> str | None:
    """Say before building when the test split cannot judge even a perfect candidate at the profile's margin:
    the bundle is still built and signed, and its accuracy verdict is ``inconclusive`` (what that means is the
    profile's ``budgets.on_inconclusive``; see :func:`factory.bench.budgets.judge`). Returns the reason, or None."""
    if ctx.task.name != "classification":
        return None  # a bootstrap interval of a continuous metric has no such floor
    why = unresolvable(profile["budgets"], len(ctx.y_test))
    if why:
        rule = profile["budgets"].get("on_inconclusive", "auto")
        progress.info(f"[{profile['name']}] {why}: building anyway, the accuracy verdict will be inconclusive "
                      f"(budgets.on_inconclusive={rule}); to decide it: {WAYS_OUT}")  # fmt: skip
    return why


@dataclass
class Failure:
    """A target (or candidate) that could not be built: where it failed and what the runtime said."""

    target: str
    backend: str | None
    stage: str
    operator: str | None
    message: str
    hint: str | None = None

    passed = False

    @classmethod
    def of(cls, target: str, backend: str | None, exc: Exception) -> "Failure":
        """From the error that stopped the build (an ExportError names its stage and operator)."""
        text = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return cls(
            target,
            backend,
            getattr(exc, "stage", "build"),
            getattr(exc, "operator", None),
            text.splitlines()[0][:500],
            getattr(exc, "hint", None),
        )

    @property
    def text(self) -> str:
        """One line for tables and logs."""
        where = f" at {self.stage}" + (f" (operator {self.operator})" if self.operator else "")
        return f"FAILED{where}: {self.message}"

    def to_dict(self) -> dict:
        """JSON form for reports."""
        return {
            "target": self.target,
            "backend": self.backend,
            "stage": self.stage,
            "operator": self.operator,
            "message": self.message,
            "hint": self.hint,
            "passed": False,
        }


def isolated(target: str, backend: str | None, work) -> "BuildResult | Failure":
    """Run one target's build; a failure at any stage becomes a :class:`Failure` and the caller goes on with
    the other targets. Input errors that are no target's fault (a missing model, a bad profile) still stop."""
    try:
        return work()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded with its stage; the other targets are built
        progress.info(f"[{target}] failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return Failure.of(target, backend, exc)


def build_report(result: BuildResult) -> dict:
    """The headline figures of one build, for CI and DVC metrics (the manifest has everything)."""
    m = result.manifest
    p = m.validation["parity"]
    return {
        "target": m.target,
        "name": m.name,
        "version": m.version,
        "backend": m.runtime["backend"],
        "precision": m.recipe["precision"],
        "pruning": m.recipe["pruning"],
        "bundle": str(result.folder),
        "archive": str(result.archive),
        "archive_sha256": sha256_file(result.archive),
        "task": m.validation.get("task", "classification"),
        "top1": p.get("top1"),
        "accuracy_drop_pt": p.get("accuracy_drop_pt"),
        "top1_agreement": p.get("top1_agreement"),
        "corner_error_pct": p.get("corner_error_pct"),
        "corner_error_increase_pct": p.get("corner_error_increase_pct"),
        "map50": p.get("map50"),
        "map50_drop_pt": p.get("map50_drop_pt"),
        "latency_postprocess_p50_ms": m.latency.get("postprocess_p50_ms"),
        "latency_p50_ms": m.latency["p50_ms"],
        "latency_p95_ms": m.latency["p95_ms"],
        "latency_source": m.latency.get("source"),
        "size_bytes": m.artifact["size_bytes"],
        "macs": m.artifact["macs"],
        "passed": m.passed,
        "build_seconds": m.lineage.get("build_seconds"),
        "mlflow": m.lineage.get("mlflow"),
    }


def run_batches(runner, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """A runner's outputs on ``x``, ``batch`` images per call."""
    return np.concatenate([runner(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])


def _validate(ctx: BuildContext, backend, out: Path, runtime: dict) -> tuple[dict, dict]:
    """Parity on the test split, then the quick batch-1 latency probe, both with the bundle's own runner."""
    with stage(f"{backend.name}-load"):
        runner = backend.runtime.load(out, runtime)
    with stage(f"{backend.name}-validate"):
        outputs = run_batches(runner, ctx.x_test, 32)
    parity = ctx.task.parity(outputs, ctx.reference, ctx.y_test)
    latency = (
        quick_latency(runner, ctx.x_test)
        | postprocess_latency(ctx.task, outputs)
        | {
            "threads": runtime.get("threads"),
            "host": host_info(),
            "source": "quick probe at build time (separate run)",
        }
    )
    return parity, latency


def _manifest(
    ctx: BuildContext,
    profile: dict,
    backend,
    runtime: dict,
    version: str,
    out: Path,
    done: Converted,
    parity: dict,
    latency: dict,
    seconds: dict,
) -> Manifest:
    canonical, recipe = ctx.canonical, profile["recipe"]
    precision = recipe["precision"]
    size = sum((out / f).stat().st_size for f in done.files)
    gz = sum(len(zlib.compress((out / f).read_bytes(), 6)) for f in done.files)
    # The numeric tolerance applies only to conversions meant to be exact; a pruned model is a new model.
    tolerance = backend.capabilities.parity_tolerance.get(precision) if done.prune["method"] == "none" else None
    checks = check_budgets(
        profile["budgets"],
        **parity_evidence(parity),
        max_abs_diff=parity["max_abs_diff"],
        tolerance=tolerance,
        latency_p95_ms=latency["p95_ms"],
        size_mb=size / 1e6,
    )
    strict = precision.startswith("int8") or done.prune["method"] != "none"
    exact = any(c.check == "max_abs_diff" and c.passed for c in checks)
    verdict = judge(checks, profile["budgets"].get("on_inconclusive", "auto"), exact=exact, strict=strict)
    if verdict["inconclusive"]:
        progress.info(f"[{profile['name']}] {verdict['why']}")
    rt = backend.runtime
    return Manifest(
        name=canonical.card["name"],
        version=version,
        target=profile["name"],
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        runtime={
            "backend": backend.name,
            "package": rt.package,
            "min_version": rt.min_version,
            "built_with": rt.version(),
            "options": runtime,
            "dynamic_batch": rt.dynamic_batch and done.compile.get("fixed_batch") is None,
        },
        artifact={
            "main": done.files[0],
            "precision": precision,
            "size_bytes": size,
            "size_gzip_bytes": gz,
            "macs": done.prune.get("macs_after") or canonical.card["complexity"]["macs"],
            "canonical_macs": canonical.card["complexity"]["macs"],
            "compile": done.compile,
        },
        files=file_entries(out, done.files),
        input=canonical.card["input"],
        output=canonical.card["output"],
        preprocessing=canonical.preprocessing,
        labels=canonical.labels,
        recipe={
            **recipe,
            "quantization_applied": done.quantization,
            "pruning_applied": done.prune,
            "note": backend.capabilities.notes.get(precision),
        },
        validation={
            "task": ctx.task.name,
            "split": "test",
            "dataset_hash": ctx.dataset.dataset_hash,
            "parity": parity,
            "budgets": budgets_for(profile["budgets"], ctx.task.name),  # the task's own, as reports show them
            "checks": [c.to_dict() for c in checks],
            "passed": verdict["passed"],
            **({"inconclusive": verdict | {"ways_out": WAYS_OUT}} if verdict["inconclusive"] else {}),
        },
        latency=latency,
        lineage={
            "canonical": {
                "path": str(canonical.path),
                "weights_sha256": canonical.identity,
                "onnx_sha256": canonical.card["files"]["onnx"]["sha256"],
                "architecture": canonical.card["architecture"],
                "task": canonical.task,
                "test_metrics": {k: v for k, v in canonical.card["metrics"]["test"].items() if isinstance(v, float)},
                **(
                    {"test_top1": canonical.card["metrics"]["test"]["top1"]}
                    if canonical.task == "classification"
                    else {}
                ),
            },
            "training": {
                k: canonical.card["lineage"].get(k)
                for k in ("dataset", "dataset_hash", "config_hash", "seed", "git", "mlflow")
            },
            "target_profile": {"path": profile["source"], "sha256": sha256_file(profile["source"])},
            "toolchain": package_versions(TOOLCHAIN) | {"edge-model-factory": __version__},
            "build_seconds": seconds,
        },
        reference_profile=canonical.card["reference_profile"],
    )


def make_bundle(ctx: BuildContext, profile: dict, dest: Path, key, version: str, cache_dir: Path) -> Manifest:
    """Convert, validate and measure one resolved profile into a signed bundle folder at ``dest``.

    Not packed, not tracked: a search keeps its candidates like this in its cache, and
    :func:`build` publishes one (see :mod:`factory.pipeline.publish`).
    """
    started = time.perf_counter()
    backend = get_backend(profile["backend"])
    runtime = backend.runtime.resolve_options(profile["runtime"], profile["recipe"]["precision"])
    with tempfile.TemporaryDirectory(prefix="factory-build-") as work, atomic_dir(dest) as out:
        done = convert(ctx.canonical, backend, profile, runtime, ctx.dataset, Path(work), out, cache_dir)
        t0 = time.perf_counter()
        parity, latency = _validate(ctx, backend, out, runtime)
        seconds = done.seconds | {
            "validate": round(time.perf_counter() - t0, 2),
            "total": round(time.perf_counter() - started, 2),
        }
        manifest = _manifest(ctx, profile, backend, runtime, version, out, done, parity, latency, seconds)
        manifest.write_signed(out, key)
    return manifest


def build(
    model_dir: str | Path,
    target: str,
    *,
    key_path: str | Path,
    data: str | None = None,
    out_root: str | Path = "bundles",
    version: str | None = None,
    targets_dir: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    cache_dir: str | Path = ".factory/cache",
    track: bool = True,
    context: BuildContext | None = None,
) -> BuildResult:
    """Build, validate, sign, pack and (with ``track``) register one target's bundle."""
    ctx = context or load_context(model_dir, data)
    profile = load_target(target, targets_dir, overrides)
    check_resolvable(ctx, profile)
    key = load_private_key(key_path)
    card = ctx.canonical.card
    version = resolve_version(Path(out_root), card["name"], ctx.canonical.identity, version)
    dest = bundle_dir(Path(out_root), card["name"], version, profile["name"])
    with tempfile.TemporaryDirectory(prefix=f"factory-{profile['name']}-staging-") as staging:
        make_bundle(ctx, profile, Path(staging) / "bundle", key, version, Path(cache_dir))
        return publish(Path(staging) / "bundle", dest, key, track=track)
