"""The conversion steps of a build: prune -> export -> calibrate + quantize -> compile.

:func:`convert` turns the canonical model and one resolved target profile into the runtime's files
in an output folder, and returns what it did (the facts that go into the manifest's recipe). It
measures nothing and signs nothing: validation, latency, budgets and publishing are the build's
(:mod:`factory.pipeline.build`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from .._io import atomic_dir, canonical_json
from ..data.manifest import DatasetManifest
from ..data.splits import calibration_set, load_split, load_split_images
from ..lineage import package_versions
from ..tasks import get_task
from ..train.canonical import CanonicalModel, export_onnx, onnx_logits
from .base import Backend, stage
from .prune import PROCEDURE_VERSION, prepare_module
from .repair import ValidationSet, repair_quantization, task_judge

__all__ = ["TOOLCHAIN", "Converted", "convert"]

TOOLCHAIN = [
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "openvino",
    "nncf",
    "litert-torch",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "torch-pruning",
    "numpy",
]


@dataclass
class Converted:
    """What :func:`convert` made: the files it wrote, and the facts of each step."""

    files: list[str]  # bundle file names in the output folder, main one first
    prune: dict
    quantization: dict
    compile: dict
    seconds: dict[str, float]


def _cached_export(
    backend: Backend,
    canonical: CanonicalModel,
    module,
    prune_facts: dict,
    pruning: dict,
    dataset: DatasetManifest,
    work: Path,
    cache_dir: Path,
) -> Path:
    """The backend's fp32 artifact, from the export cache when this exact export was made before.

    Every precision of a target starts from the same fp32 export (a LiteRT conversion takes ~30 s),
    so a recipe search converts once per (model, pruning, toolchain), not once per candidate.
    """
    pruned = prune_facts["method"] != "none"
    ident = {
        "backend": backend.name,
        "weights": canonical.identity,
        "pruning": pruning if pruned else None,
        "dataset": dataset.dataset_hash if pruned else None,
        "toolchain": package_versions([*TOOLCHAIN, *backend.toolchain]),
        "procedure": PROCEDURE_VERSION,
    }
    cached = cache_dir / "exports" / hashlib.sha256(canonical_json(ident)).hexdigest()[:24]
    if (cached / "export.json").is_file():
        main = json.loads((cached / "export.json").read_text())["main"]
        for f in cached.iterdir():
            if f.name != "export.json":
                shutil.copy2(f, work / f.name)
        return work / main
    onnx_path = export_onnx(module(), work / "pruned.onnx", *canonical.input_hw) if pruned else canonical.onnx
    artifact = backend.export(work, onnx_path=onnx_path, module_factory=module, input_hw=canonical.input_hw)
    with atomic_dir(cached) as tmp:
        for f in work.glob(f"{artifact.stem}.*"):
            shutil.copy2(f, tmp / f.name)
        (tmp / "export.json").write_text(json.dumps({"main": artifact.name, "ident": ident}))
    return artifact


def _module_factory(pruned, canonical: CanonicalModel):
    """The torch module to export, built on first use: the pruned one, else the canonical module."""
    return functools.cache(lambda: pruned if pruned is not None else canonical.build_module())


def _quantize(backend: Backend, canonical, profile: dict, runtime: dict, dataset, module, fp32: Path, work: Path):
    """The quantize step; int8-static goes through the accuracy repair (unless ``repair: off`` and nothing
    is kept in float by hand, it is judged on the validation split first)."""
    q, precision = profile["recipe"]["quantization"], profile["recipe"]["precision"]

    def quantize(opts: dict, folder: Path) -> tuple[Path, dict]:
        calibration, info = calibration_set(
            dataset, canonical.preprocessing, opts["calibration_images"], opts["calibration_seed"]
        )
        path, facts = backend.quantize(
            fp32,
            folder,
            precision=precision,
            calibration=calibration,
            options=dict(opts),
            module_factory=module,
            input_hw=canonical.input_hw,
        )
        return path, facts | {"calibration": info}

    if precision != "int8-static" or (q["repair"] == "off" and not q["keep_float"]):
        return quantize(q, work)
    judge_fn = {}
    if canonical.task == "classification":
        x, y = load_split(dataset, "val", canonical.preprocessing, canonical.labels)
    else:  # judged by the task's own metric and budget (mAP@0.5 drop, corner-error increase)
        task = get_task(canonical.task, canonical.card["output"])
        x, records = load_split_images(dataset, "val", canonical.preprocessing)
        y, judge_fn = task.targets(records, canonical.labels), {"judge": task_judge(task)}
    val = ValidationSet(x, y, onnx_logits(canonical.onnx, x), n_test=len(dataset.subset("test")))
    return repair_quantization(
        quantize,
        lambda path: backend.runtime.load_file(path, runtime),
        fp32=fp32,
        options=dict(q),
        work=work,
        val=val,
        budgets=profile["budgets"],
        cheap_fixes=backend.cheap_fixes(precision, q),
        layers=lambda: backend.quantizable_layers(fp32),
        keep_float_options=backend.keep_float_options,
        **judge_fn,
    )


def convert(
    canonical: CanonicalModel,
    backend: Backend,
    profile: dict,
    runtime: dict,
    dataset: DatasetManifest,
    work: Path,
    out: Path,
    cache_dir: Path,
) -> Converted:
    """Prune, export, quantize and compile into ``out``; ``work`` is scratch space."""
    import time

    recipe, precision = profile["recipe"], profile["recipe"]["precision"]
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    progress.info(f"[{profile['name']}] {backend.name} {precision}, pruning {recipe['pruning']['method']}")
    with stage("prune"):
        pruned, prune_facts = prepare_module(canonical, dataset, recipe["pruning"], cache_dir)
    module = _module_factory(pruned, canonical)
    step("prune")
    with stage(f"{backend.name}-export"):
        artifact = _cached_export(backend, canonical, module, prune_facts, recipe["pruning"], dataset, work, cache_dir)
    step("export")
    quant_facts: dict = {}
    if precision != "fp32":
        with stage(f"{backend.name}-quantize"):
            artifact, quant_facts = _quantize(backend, canonical, profile, runtime, dataset, module, artifact, work)
    step("quantize")
    with stage(f"{backend.name}-compile"):
        compile_facts = backend.compile(artifact, out, runtime, precision)
    step("compile")
    files = [f for f in backend.runtime.artifact_files if (out / f).is_file()]
    return Converted(files, prune_facts, quant_facts, compile_facts, seconds)
