"""What `factory bench` can measure, opened behind one interface.

Accepted inputs:
- a bundle folder (``manifest.json``) or archive (``.tar.gz``): its runtime, options and budgets;
- a folder of bundles (``bundles/id-docs/0.1.0``) or of versions (``bundles/id-docs``, newest version);
- a canonical model folder (``model_card.json``): run in PyTorch eager, the reference for speedups;
- a pipeline release (a bundle with a ``pipeline`` section): a camera frame through both stages, and its
  pipeline YAML: the canonical pair chained in PyTorch eager, its speedup reference;
- a bare model file that no bundle describes (``.onnx``, OpenVINO ``.xml``, ``.tflite``): latency only,
  on generated inputs of the shape the model declares.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import sha256_file
from ..errors import BundleError, ExportError, InputError, MissingDependencyError, ModelError

__all__ = ["Artifact", "open_artifacts", "parse_shape"]


@dataclass
class Artifact:
    id: str
    kind: str  # bundle | canonical | file
    path: str
    runner: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple[int, ...]  # batch-1 shape fed to the latency loop
    identity: dict  # model name, dataset hash, canonical weights, target, version, content sha256
    runtime: dict  # backend, version, threads, precision
    size_bytes: int
    labels: list[str] | None = None
    preprocessing: dict | None = None
    budgets: dict | None = None
    canonical_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # what a benchmark worker process opens (an archive's unpacked folder)
    task: str = "classification"  # what the model is for (factory.tasks)
    output: dict | None = None  # the raw output's description (a detection model's grid and classes)


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` (or ``1x3x224x224``) as a tuple of positive ints; InputError otherwise."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"input shape {text!r} is not comma-separated integers like 1,3,128,128") from None
    if not shape or any(v <= 0 for v in shape):
        raise InputError(f"input shape {text!r} must be positive integers")
    return shape


def _bundle(folder: Path, public_key) -> Artifact:
    from ..device.loader import open_bundle

    m, runner = open_bundle(folder, public_key)
    rt = m.runtime
    chain = "pipeline" in m.extra  # frames in, both stages run, the classifier's answer out
    return Artifact(
        id=f"{m.target}@{m.version}",
        kind="bundle",
        path=str(folder),
        runner=runner,
        input_shape=(1, *m.extra["pipeline"]["frame_size"], 3) if chain else (1, *m.input["shape"][1:]),
        identity={
            "model": m.name,
            "version": m.version,
            "target": m.target,
            "dataset_hash": m.validation.get("dataset_hash"),
            "canonical_weights_sha256": m.lineage.get("canonical", {}).get("weights_sha256"),
            "sha256": sha256_file(folder / "manifest.json"),
        },
        runtime={
            "backend": rt["backend"],
            "version": rt.get("built_with"),
            "threads": rt["options"].get("threads"),
            "precision": m.recipe["precision"],
            "options": rt["options"],
        },
        size_bytes=m.artifact["size_bytes"],
        labels=m.labels,
        preprocessing=m.preprocessing,
        budgets=m.validation["budgets"],
        canonical_path=m.lineage.get("canonical", {}).get("path"),
        extra={"macs": m.artifact.get("macs")} | ({"end_to_end": m.validation.get("end_to_end")} if chain else {}),
        task="pipeline" if chain else m.validation.get("task", "classification"),
        output=m.output,
    )


def _eager(model, threads: int):
    """A canonical model's torch module as a runner in PyTorch eager, and its runtime row."""
    import torch

    module = model.build_module()
    torch.set_num_threads(threads)

    def runner(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    return runner, {"backend": "pytorch-eager", "version": torch.__version__, "precision": "fp32"}


def _canonical_chain(path: Path, threads: int) -> Artifact:
    """A pipeline YAML's canonical pair, both stages in PyTorch eager: the pipeline's speedup reference."""
    from ..data.manifest import load_manifest
    from ..device.chain import Chain, Stage, load_chain_config
    from ..train.canonical import load_canonical

    config = load_chain_config(path)
    stages, runtime = [], {}
    for s in ("localise", "classify"):
        model = load_canonical(config[s])
        runner, runtime = _eager(model, threads)
        stages.append(Stage(runner, model.card["preprocessing"], model.card["labels"], model.task))
    frames = load_manifest(config["data"])
    sizes = sorted((r.height, r.width) for r in frames.subset("test"))
    size = max(set(sizes), key=sizes.count)
    return Artifact(
        id="pytorch-eager-chain",
        kind="canonical",
        path=str(path),
        runner=Chain(None, *stages),
        input_shape=(1, *size, 3),
        identity={"model": config["name"], "dataset_hash": frames.dataset_hash, "sha256": sha256_file(path)},
        runtime=runtime | {"threads": threads},
        size_bytes=sum(load_canonical(config[s]).main_file.stat().st_size for s in ("localise", "classify")),
        labels=stages[1].labels,
        task="pipeline",
    )


def _canonical(folder: Path, threads: int) -> Artifact:
    """A canonical model in PyTorch eager; one with no torch module (an ONNX-only import onnx2torch cannot
    convert) runs its ONNX graph in ONNX Runtime instead, said so (no eager baseline: no speedup column;
    accuracy is still judged against this graph)."""
    from ..train.canonical import load_canonical

    model = load_canonical(folder)
    card = model.card
    extra = {"macs": card["complexity"]["macs"]}
    try:
        runner, runtime = _eager(model, threads)
    except (ExportError, MissingDependencyError) as exc:
        from ..device.runtimes import get_runtime

        ort = get_runtime("onnxruntime")
        runner = ort.load_file(model.onnx, {"threads": threads})
        art_id, kind, size = "canonical-onnx", "canonical-graph", model.onnx.stat().st_size
        runtime = {"backend": "onnxruntime", "version": ort.version(), "precision": "fp32"}
        extra["note"] = f"no PyTorch eager baseline: {str(exc).splitlines()[0]}"
    else:
        art_id, kind, size = "pytorch-eager", "canonical", model.main_file.stat().st_size
    return Artifact(
        id=art_id,
        kind=kind,
        path=str(folder),
        runner=runner,
        input_shape=(1, 3, *model.input_hw),
        identity={
            "model": card["name"],
            "dataset_hash": card["lineage"]["dataset_hash"],
            "canonical_weights_sha256": model.identity,
            "sha256": model.identity,
        },
        runtime=runtime | {"threads": threads},
        size_bytes=size,
        labels=card["labels"],
        preprocessing=card["preprocessing"],
        canonical_path=str(folder),
        extra=extra,
        task=model.task,
        output=card["output"],
    )


def _file(path: Path, threads: int, shape: tuple[int, ...] | None) -> Artifact:
    from ..device.runtimes import runtime_for_file

    backend = runtime_for_file(path)
    try:
        declared = backend.declared_input_shape(path)
        runner = backend.load_file(path, {"threads": threads})
    except InputError:
        raise
    except Exception as exc:  # each runtime raises its own types for a corrupt file
        raise ModelError(
            f"{path}: {backend.name} cannot load this model file ({str(exc).splitlines()[0][:300]})",
            hint="is the file complete and of the type its suffix says?",
        ) from None
    if shape is None:
        missing = [i for i, d in enumerate(declared) if d is None and i != 0]
        if missing:
            raise InputError(
                f"{path} declares input {declared} with dynamic dimension(s) {missing}",
                hint="pass --input-shape, e.g. --input-shape 1,3,224,224",
            )
        shape = (1, *declared[1:])
    elif len(shape) != len(declared) or any(
        d is not None and d != s for i, (d, s) in enumerate(zip(declared, shape, strict=True)) if i
    ):
        shown = ",".join("?" if d is None else str(d) for d in declared)
        raise InputError(f"input shape {','.join(map(str, shape))} does not fit {path}, which declares [{shown}]")
    elif declared[0] is not None and shape[0] != declared[0]:
        raise InputError(f"{path} has a fixed batch of {declared[0]}; --input-shape asks for {shape[0]}")
    size = sum(p.stat().st_size for p in [path, path.with_suffix(".bin")] if p.is_file())
    return Artifact(
        id=path.name,
        kind="file",
        path=str(path),
        runner=runner,
        input_shape=tuple(shape),
        identity={"model": path.stem, "sha256": sha256_file(path)},
        runtime={"backend": backend.name, "version": backend.version(), "threads": threads, "precision": "unknown"},
        size_bytes=size,
    )


def _expand(path: Path) -> list[Path]:
    """A folder of bundles or of versions becomes its bundle folders (newest version)."""
    if (path / "manifest.json").is_file() or (path / "model_card.json").is_file() or not path.is_dir():
        return [path]
    targets = sorted(p for p in path.iterdir() if (p / "manifest.json").is_file())
    if targets:
        return targets
    from ..bundle.manifest import SEMVER, version_key

    versions = sorted(
        (p for p in path.iterdir() if p.is_dir() and SEMVER.match(p.name)), key=lambda p: version_key(p.name)
    )
    if versions:
        return sorted(p for p in versions[-1].iterdir() if (p / "manifest.json").is_file())
    raise InputError(f"{path} is neither a bundle, a canonical model, nor a folder of bundles")


def open_artifacts(
    paths: list[str], *, threads: int = 2, input_shape: str | None = None, public_key=None, stack: contextlib.ExitStack
) -> list[Artifact]:
    """Open every input (bundles, archives, canonical models, bare model files) behind one interface."""
    from ..bundle.archive import unpack

    shape = parse_shape(input_shape) if input_shape else None
    out: list[Artifact] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{p} does not exist")
        for q in _expand(p):
            if q.is_file() and q.name.endswith((".tar.gz", ".tgz")):
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="factory-bench-")))
                out.append(_bundle(unpack(q, tmp / "bundle"), public_key))
                out[-1].source, out[-1].path = out[-1].path, str(q)
            elif q.is_dir() and (q / "manifest.json").is_file():
                out.append(_bundle(q, public_key))
            elif q.is_dir() and (q / "model_card.json").is_file():
                out.append(_canonical(q, threads))
            elif q.is_file() and q.suffix in (".yaml", ".yml"):
                out.append(_canonical_chain(q, threads))
            elif q.is_file():
                out.append(_file(q, threads, shape))
            else:
                raise BundleError(f"{q} is not something factory bench can run")
    for a in out:
        a.source = a.source or a.path
    ids = [a.id for a in out]
    seen: dict[str, int] = {}
    for a in out:  # make ids unique when two inputs share a label (the same file twice: an A/A run)
        if ids.count(a.id) > 1:
            seen[a.id] = seen.get(a.id, 0) + 1
            a.id = f"{a.id}#{seen[a.id]}"
    return out
