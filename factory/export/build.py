"""``factory build``: canonical model + target profile -> verified, signed bundle.

prune -> export -> calibrate + quantize -> compile -> validate parity -> quick latency -> sign.
Every figure is measured and written into the manifest before a verdict; the profile's budgets
decide pass or fail. A failing build still leaves a complete, signed bundle whose manifest says
``validation.passed: false`` (and the command exits 1); an *error* leaves nothing behind.
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
from ..bundle.archive import BUNDLE_SCHEMA, pack
from ..bundle.manifest import bundle_dir, file_entries, resolve_version, write_signed
from ..bundle.signing import load_private_key
from ..data.manifest import load_manifest
from ..errors import DataError
from ..lineage import host_info, package_versions
from ..train.canonical import CanonicalModel, export_onnx, load_canonical, onnx_logits
from .base import get_backend
from .calibration import calibration_set, load_split
from .parity import budget_checks, parity_metrics
from .prune import prepare_module
from .targets import load_target

__all__ = ["BuildResult", "build", "build_report"]

TOOLCHAIN = ["torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "litert-torch", "ai-edge-litert",
             "ai-edge-quantizer", "torch-pruning", "numpy"]


@dataclass
class BuildResult:
    folder: Path
    archive: Path
    manifest: dict

    @property
    def passed(self) -> bool:
        return self.manifest["validation"]["passed"]


def build_report(result: BuildResult) -> dict:
    """The headline figures of one build, for CI and DVC metrics (the manifest has everything)."""
    m = result.manifest
    return {
        "target": m["target"], "name": m["name"], "version": m["version"], "backend": m["runtime"]["backend"],
        "precision": m["recipe"]["precision"], "pruning": m["recipe"]["pruning"], "bundle": str(result.folder),
        "archive": str(result.archive), "archive_sha256": sha256_file(result.archive),
        "top1": m["validation"]["parity"]["top1"], "accuracy_drop_pt": m["validation"]["parity"]["accuracy_drop_pt"],
        "top1_agreement": m["validation"]["parity"]["top1_agreement"], "latency_p50_ms": m["latency"]["p50_ms"],
        "latency_p95_ms": m["latency"]["p95_ms"], "size_bytes": m["artifact"]["size_bytes"], "macs": m["artifact"]["macs"],
        "passed": m["validation"]["passed"], "build_seconds": m["lineage"]["build_seconds"],
    }


def _dataset(canonical: CanonicalModel, data: str | None):
    path = data or canonical.card["lineage"].get("dataset_manifest")
    if not path or not Path(path).exists():
        raise DataError(f"the evaluation dataset {path!r} of this model is not here",
                        hint="pass --data PATH/TO/dataset (the one the model was trained on)")
    manifest = load_manifest(path)
    if manifest.dataset_hash != canonical.card["lineage"]["dataset_hash"]:
        progress.info(f"note: dataset {manifest.location} has hash {manifest.dataset_hash[:12]}, "
                      f"the model was trained on {canonical.card['lineage']['dataset_hash'][:12]}")
    return manifest


def _run_batches(runner, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])


def _cached_export(backend, canonical, module, prune_facts, pruning, manifest_ds, work: Path, cache_dir: Path) -> Path:
    """The backend's fp32 artifact, from the export cache when this exact export was made before.

    Every precision of a target starts from the same fp32 export (a LiteRT conversion takes ~30 s),
    so a recipe search converts once per (model, pruning, toolchain), not once per candidate.
    """
    import hashlib
    import json
    import shutil

    from .._io import canonical_json
    from .prune import PROCEDURE_VERSION

    pruned = prune_facts["method"] != "none"
    ident = {"backend": backend.name, "weights": canonical.card["files"]["weights"]["sha256"],
             "pruning": pruning if pruned else None, "dataset": manifest_ds.dataset_hash if pruned else None,
             "toolchain": package_versions(TOOLCHAIN), "procedure": PROCEDURE_VERSION}
    cached = cache_dir / "exports" / hashlib.sha256(canonical_json(ident)).hexdigest()[:24]
    if (cached / "export.json").is_file():
        main = json.loads((cached / "export.json").read_text())["main"]
        for f in cached.iterdir():
            if f.name != "export.json":
                shutil.copy2(f, work / f.name)
        return work / main
    onnx_path = export_onnx(module, work / "pruned.onnx", *canonical.input_hw) if pruned else canonical.onnx
    artifact = backend.export(work, onnx_path=onnx_path, module_factory=lambda: module, input_hw=canonical.input_hw)
    with atomic_dir(cached) as tmp:
        for f in work.glob(f"{artifact.stem}.*"):
            shutil.copy2(f, tmp / f.name)
        (tmp / "export.json").write_text(json.dumps({"main": artifact.name, "ident": ident}))
    return artifact


def build(model_dir: str | Path, target: str, *, key_path: str | Path, data: str | None = None, out_root: str | Path = "bundles",
          version: str | None = None, targets_dir: str | Path | None = None, overrides: tuple[str, ...] = (),
          cache_dir: str | Path = ".factory/cache", track: bool = True) -> BuildResult:
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = round(now - clock, 2)
        clock = now

    canonical = load_canonical(model_dir)
    profile = load_target(target, targets_dir, overrides)
    backend = get_backend(profile["backend"])
    recipe = profile["recipe"]
    precision = recipe["precision"]
    runtime = backend.resolve_runtime(profile["runtime"], precision)
    key = load_private_key(key_path)
    manifest_ds = _dataset(canonical, data)
    spec, hw = canonical.preprocessing, canonical.input_hw
    x_test, y_test = load_split(manifest_ds, "test", spec, canonical.labels)
    reference = onnx_logits(canonical.onnx, x_test)
    stage("load")

    progress.info(f"[{target}] {backend.name} {precision}, pruning {recipe['pruning']['method']}")
    module, prune_facts = prepare_module(canonical, manifest_ds, recipe["pruning"], Path(cache_dir))
    stage("prune")
    version = resolve_version(Path(out_root), canonical.card["name"], canonical.card["files"]["weights"]["sha256"], version)
    dest = bundle_dir(Path(out_root), canonical.card["name"], version, profile["name"])
    with tempfile.TemporaryDirectory(prefix="factory-build-") as work_dir, atomic_dir(dest) as out:
        work = Path(work_dir)
        artifact = _cached_export(backend, canonical, module, prune_facts, recipe["pruning"], manifest_ds, work, Path(cache_dir))
        stage("export")
        calibration, quant_facts = None, {}
        if precision != "fp32":
            calibration, calib_info = calibration_set(manifest_ds, spec, recipe["quantization"]["calibration_images"],
                                                      recipe["quantization"]["calibration_seed"])
            artifact, quant_facts = backend.quantize(artifact, work, precision=precision, calibration=calibration,
                                                     options=dict(recipe["quantization"]), module_factory=lambda: module, input_hw=hw)
            quant_facts["calibration"] = calib_info
        stage("quantize")
        compile_facts = backend.compile(artifact, out, runtime, precision)
        stage("compile")
        runner = backend.load_runner(out, runtime)
        logits = _run_batches(runner, x_test, 32)
        parity = parity_metrics(logits, reference, y_test)
        stage("validate")
        from ..bench.quick import quick_latency

        latency = quick_latency(runner, x_test) | {"threads": runtime.get("threads"), "host": host_info()}
        stage("latency")
        names = [f for f in backend.capabilities.artifact_files if (out / f).is_file()]
        size = sum((out / f).stat().st_size for f in names)
        gz = sum(len(zlib.compress((out / f).read_bytes(), 6)) for f in names)
        # The numeric tolerance applies only to conversions meant to be exact; a pruned model is a new model.
        tolerance = backend.capabilities.parity_tolerance.get(precision) if prune_facts["method"] == "none" else None
        checks = budget_checks(parity, profile["budgets"], tolerance=tolerance,
                               latency_p95=latency["p95_ms"], size_mb=size / 1e6)
        macs = prune_facts.get("macs_after") or canonical.card["complexity"]["macs"]
        manifest = {
            "schema": BUNDLE_SCHEMA,
            "name": canonical.card["name"],
            "version": version,
            "target": profile["name"],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runtime": {"backend": backend.name, "package": backend.capabilities.runtime_package,
                        "min_version": backend.capabilities.min_runtime_version, "built_with": backend.runtime_version(),
                        "options": runtime, "dynamic_batch": backend.capabilities.dynamic_batch and compile_facts.get("fixed_batch") is None},
            "artifact": {"main": names[0], "precision": precision, "size_bytes": size, "size_gzip_bytes": gz,
                         "macs": macs, "canonical_macs": canonical.card["complexity"]["macs"], "compile": compile_facts},
            "files": file_entries(out, names),
            "input": canonical.card["input"],
            "output": canonical.card["output"],
            "preprocessing": spec,
            "labels": canonical.labels,
            "recipe": {**recipe, "quantization_applied": quant_facts, "pruning_applied": prune_facts,
                       "note": backend.capabilities.notes.get(precision)},
            "validation": {"split": "test", "dataset_hash": manifest_ds.dataset_hash, "parity": parity,
                           "budgets": profile["budgets"], "checks": checks, "passed": all(c["passed"] for c in checks)},
            "latency": latency,
            "lineage": {
                "canonical": {"path": str(canonical.path), "weights_sha256": canonical.card["files"]["weights"]["sha256"],
                              "onnx_sha256": canonical.card["files"]["onnx"]["sha256"], "architecture": canonical.card["architecture"],
                              "test_top1": canonical.card["metrics"]["test"]["top1"]},
                "training": {k: canonical.card["lineage"].get(k) for k in ("dataset", "dataset_hash", "config_hash", "seed", "git", "mlflow")},
                "target_profile": {"path": profile["source"], "sha256": sha256_file(profile["source"])},
                "toolchain": package_versions(TOOLCHAIN) | {"edge-model-factory": __version__},
                "build_seconds": stages,
            },
            "reference_profile": canonical.card["reference_profile"],
        }
        write_signed(out, manifest, key)
    archive = pack(dest, dest.parent / f"{profile['name']}.tar.gz")
    result = BuildResult(dest, archive, manifest)
    if track:
        from ..bundle.tracking import log_build

        log_build(result)
    return result

