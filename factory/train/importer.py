"""``factory model import``: a canonical model directory from a model the factory did not train.

Sources (:mod:`.sources` tells them apart by their bytes): an ONNX graph from any exporter, a
``torch.export`` program (``.pt2``), a TorchScript archive, or an architecture name plus a state_dict
(a ``.pt2`` with ``--architecture`` gives its weights to that architecture, so it can be pruned).
The directory is the one ``factory train`` writes (card, ONNX graph, weights where an architecture
rebuilds them, reference profile, lineage with the source's sha256 and ``imported``), evaluated on
the user's dataset, so parity, budgets, the gate and drift monitoring work as for a trained model.
Nothing is written unless every check passes.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__, progress
from .._io import atomic_dir, sha256_file, write_json
from ..config import config_hash, validate
from ..data.manifest import load_manifest
from ..errors import InputError, ModelError
from ..lineage import git_revision, package_versions
from ..preprocess import input_spec, make_spec, preprocess
from ..stats import image_stats
from ..tasks import get_task
from ..tasks.classification import softmax
from .canonical import (
    CARD_NAME,
    CARD_SCHEMA,
    ONNX_NAME,
    ONNX_OPSET,
    WEIGHTS_NAME,
    CanonicalModel,
    count_macs,
    export_onnx,
)
from .evaluate import classification_metrics, plot_confusion, reference_profile
from .schema import TRAIN_SCHEMA

__all__ = ["ImportRequest", "import_model"]

PROGRAM_NAME = "program.pt2"
PACKAGES = ["torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "numpy", "mlflow"]


@dataclass
class ImportRequest:
    """What the user said about the model (CLI flags); ``None`` means "read it from the model"."""

    source: Path
    out: Path
    data: Path
    name: str = "imported"
    task: str = "classification"
    labels: list[str] | None = None
    size: tuple[int, int] | None = None
    color_order: str = "RGB"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    scale: float = 1.0 / 255.0
    layout: str = "NCHW"
    outputs: str = "auto"  # auto | logits | probabilities
    output: str | None = None  # which graph output, when there are several
    architecture: str | None = None
    interpolation: str = "area"
    parity_tolerance: float = 1e-4


@dataclass
class _Prepared:
    """A source made ready: how to write the canonical files, and the source's own outputs for parity."""

    kind: str
    reference: object  # callable: preprocessed NCHW batch -> the source's outputs
    write: object  # callable: folder -> card "files" (writes model.onnx and weights or program)
    module: object | None  # the torch module, when there is one (MACs, architecture)
    facts: dict
    onnx_model: object | None = None  # the conformed graph of an ONNX source
    probabilities: bool = False  # the source's outputs are probabilities (parity compares softmax)


def _size(req: ImportRequest) -> tuple[int, int]:
    if req.size is None:
        raise InputError("--size HxW is required for this source (the model's input height and width, e.g. 48x192)")
    return req.size


def _onnx_files(folder: Path, opset: int) -> dict:
    return {
        "onnx": {"path": ONNX_NAME, "sha256": sha256_file(folder / ONNX_NAME), "opset": opset, "dynamic_batch": True}
    }


def _prepare_onnx(req: ImportRequest, model, probe: np.ndarray, kind: str = "onnx") -> _Prepared:
    """An ONNX source: conformed in memory (:func:`.onnx_graph.conform`); parity against the file as given."""
    import onnx

    from .onnx_graph import conform, opset_of, run_onnx

    source = onnx.ModelProto()
    source.CopyFrom(model)
    conformed, facts = conform(
        model, size=_size(req), layout=req.layout, output=req.output, outputs_are=req.outputs, probe=probe
    )
    out_name = facts["source_output"]
    keep = [o for o in source.graph.output if o.name == out_name]
    del source.graph.output[:]
    source.graph.output.extend(keep)

    def reference(x: np.ndarray) -> np.ndarray:  # image by image: the source's batch may be pinned at 1
        x = x.transpose(0, 2, 3, 1).copy() if req.layout == "NHWC" else x
        return np.concatenate([run_onnx(source, x[i : i + 1]) for i in range(len(x))])

    def write(folder: Path) -> dict:
        onnx.save_model(conformed, str(folder / ONNX_NAME))
        return _onnx_files(folder, opset_of(conformed))

    return _Prepared(kind, reference, write, None, facts, conformed, facts["outputs_are"] == "probabilities")


def _torch_reference(module):
    import torch

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    return reference


def _architecture_module(req: ImportRequest, state: dict, n_classes: int, what: str):
    from .models import create_model, is_architecture
    from .sources import strict_load

    if not is_architecture(req.architecture):
        from ..errors import UnknownNameError
        from .models import list_models

        raise UnknownNameError("architecture", req.architecture, list_models(), hint="or timm:NAME with the timm extra")
    module = create_model(req.architecture, n_classes)
    strict_load(module, state, what)
    return module.eval()


def _with_weights(req: ImportRequest, module, kind: str) -> _Prepared:
    """An architecture with its weights: written as ``factory train`` writes (weights.pt + ONNX export)."""
    import torch

    from .loop import card_files

    def write(folder: Path) -> dict:
        torch.save(module.state_dict(), folder / WEIGHTS_NAME)
        export_onnx(module, folder / ONNX_NAME, *_size(req), opset=ONNX_OPSET)
        return card_files(folder)

    return _Prepared(kind, _torch_reference(module), write, module, {"architecture": req.architecture})


def _check_free_batch(onnx_path: Path, source: Path) -> None:
    import onnx

    from .onnx_graph import input_dims

    dims = input_dims(onnx.load(str(onnx_path)))
    if dims and isinstance(dims[0], int):
        raise ModelError(
            f"{source}: the program was exported with a fixed batch of {dims[0]}; builds validate in batches",
            hint="export it with a dynamic batch: torch.export.export(m, (x,), dynamic_shapes=({0: Dim('batch')},)), "
            "or pass its architecture with --architecture",
        )


def _prepare(req: ImportRequest, kind: str, n_classes: int, probe: np.ndarray) -> _Prepared:
    from . import sources

    if kind == "onnx":
        from .onnx_graph import load_onnx

        if req.architecture:
            raise InputError("--architecture goes with a state_dict or a .pt2 program, not an ONNX graph")
        return _prepare_onnx(req, load_onnx(req.source), probe)
    if kind == "state-dict":
        if not req.architecture:
            raise InputError(
                f"{req.source} is a state_dict: weights without a graph",
                hint="name its architecture with --architecture (e.g. mobilenet_v3_small, timm:resnet18)",
            )
        return _with_weights(
            req, _architecture_module(req, sources.load_state_dict(req.source), n_classes, str(req.source)), kind
        )
    if kind == "torch-export":
        program, module = sources.load_program(req.source)
        if req.architecture:
            state = {**program.state_dict, **{k: v for k, v in program.constants.items() if hasattr(v, "shape")}}
            return _with_weights(req, _architecture_module(req, state, n_classes, f"{req.source}'s weights"), kind)

        def write(folder: Path) -> dict:
            shutil.copyfile(req.source, folder / PROGRAM_NAME)
            export_onnx(program, folder / ONNX_NAME, *_size(req))
            _check_free_batch(folder / ONNX_NAME, req.source)
            return {
                **_onnx_files(folder, ONNX_OPSET),
                "program": {
                    "path": PROGRAM_NAME,
                    "sha256": sha256_file(folder / PROGRAM_NAME),
                    "format": "torch.export program",
                },
            }

        return _Prepared(kind, _torch_reference(module), write, module, {})
    # TorchScript: exported once to ONNX (the TorchScript exporter), then imported as that graph
    import io

    import onnx
    import torch

    if req.architecture:
        raise InputError("--architecture goes with a state_dict or a .pt2 program, not a TorchScript archive")
    module = sources.load_torchscript(req.source)
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            module,
            (torch.from_numpy(probe[:1]),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
        )
    except Exception as exc:  # the TorchScript exporter raises RuntimeError/UnsupportedOperatorError
        raise ModelError(
            f"{req.source}: the TorchScript exporter cannot convert it: {str(exc).splitlines()[0][:300]}"
        ) from None
    prepared = _prepare_onnx(req, onnx.load_from_string(buf.getvalue()), probe, kind)
    prepared.reference = _torch_reference(module)
    return prepared


def _config_values(req: ImportRequest, manifest) -> dict:
    """A training config for an architecture import: what pruning's fine-tune and the loop's retraining use."""
    cfg = {
        "data": {"manifest": str(manifest.location)},
        "model": {"name": req.name, "architecture": req.architecture, "image_size": list(_size(req))},
        "train": {"epochs": 1},
        "output": {"dir": str(req.out)},
    }
    return validate(cfg, TRAIN_SCHEMA, "import")


def _check_labels(req: ImportRequest, manifest) -> list[str]:
    labels = req.labels or list(manifest.classes)
    if len(set(labels)) != len(labels):
        raise InputError(f"--labels has duplicates: {labels}")
    missing = sorted(set(manifest.classes) - set(labels))
    if missing:
        raise InputError(
            f"the dataset's classes {missing} are not among the model's labels {labels}",
            hint="--labels lists the model's classes in output order; evaluate on a dataset of those classes",
        )
    return labels


def _colour_warning(prepared_logits, probe_fn, x_val, y_val) -> str | None:
    """A warning when the other channel order scores far better on the validation split."""
    ours = float((prepared_logits.argmax(1) == y_val).mean())
    swapped = float((probe_fn(x_val[:, ::-1].copy()).argmax(1) == y_val).mean())
    if swapped > ours + 0.10:
        return (
            f"validation top-1 is {ours:.3f} with this channel order and {swapped:.3f} with the other one: "
            "is --color-order right?"
        )
    return None


def import_model(req: ImportRequest) -> CanonicalModel:
    """Import, evaluate and write the canonical model directory (see the module docstring)."""
    from .data import load_images
    from .sources import detect_kind

    if req.task != "classification":
        raise InputError(
            f"importing a {req.task} model is not built yet: the import checks the classification output contract only",
            hint="import a classifier, or train the detector or localiser with `factory train --task`",
        )
    kind = detect_kind(req.source)
    manifest = load_manifest(req.data)
    labels = _check_labels(req, manifest)
    size = req.size
    if size is None and kind == "onnx":
        from .onnx_graph import input_dims, load_onnx

        dims = input_dims(load_onnx(req.source))
        hw = dims[2:4] if req.layout == "NCHW" else dims[1:3]
        if len(dims) == 4 and all(isinstance(d, int) for d in hw):
            size = (int(hw[0]), int(hw[1]))
    req.size = size
    spec = make_spec(
        *_size(req),
        mean=req.mean,
        std=req.std,
        interpolation=req.interpolation,
        color_order=req.color_order,
        scale=req.scale,
    )
    splits = {s: sorted(manifest.subset(s), key=lambda r: r.path) for s in ("val", "test")}
    for s, recs in splits.items():
        if not recs:
            raise InputError(f"dataset {manifest.name!r} has no {s} images to evaluate the model on")
    index = {c: i for i, c in enumerate(labels)}
    with progress.bar("loading images", sum(len(v) for v in splits.values())) as tick:
        images = {s: load_images(manifest, recs, max_side=2 * max(size), progress=tick) for s, recs in splits.items()}
    x = {s: preprocess(images[s], spec) for s in splits}
    y = {s: np.array([index[r.label] for r in recs]) for s, recs in splits.items()}
    progress.info(f"importing {req.source.name} ({kind})")
    prepared = _prepare(req, kind, len(labels), x["test"][:2])
    with atomic_dir(Path(req.out)) as tmp:
        return _finish(req, kind, labels, spec, manifest, prepared, tmp, images["val"], x, y)


def _checked_outputs(req: ImportRequest, prepared: _Prepared, graph, x: dict, labels: list[str]):
    """The canonical graph's scores per split, checked against the labels and against the source."""
    from .onnx_graph import run_onnx

    logits = {s: run_onnx(graph, b) for s, b in x.items()}
    if logits["test"].ndim != 2 or logits["test"].shape[1] != len(labels):
        raise InputError(
            f"the model returns {list(logits['test'].shape[1:])} scores per image, and there are {len(labels)} labels",
            hint="--labels must list one label per output, in output order",
        )
    n = min(64, len(x["test"]))
    ref = prepared.reference(x["test"][:n])
    ours = softmax(logits["test"][:n]) if prepared.probabilities else logits["test"][:n]
    if ref.size != ours.size:
        raise ModelError(
            f"the source returns {list(ref.shape)} for a batch of {n}; the canonical graph {list(ours.shape)}"
        )
    diff = float(np.abs(ours - ref.reshape(ours.shape)).max())
    if diff > req.parity_tolerance:
        raise ModelError(
            f"the canonical graph differs from the source by {diff:.3g} on {n} test images "
            f"(tolerance {req.parity_tolerance:g})"
        )
    return logits, n, diff


def _finish(req, kind, labels, spec, manifest, prepared, tmp: Path, val_images, x, y) -> CanonicalModel:
    import mlflow
    import onnx

    from .onnx_graph import onnx_macs, run_onnx
    from .tracking import setup_experiment

    size = _size(req)
    files = prepared.write(tmp)
    graph = onnx.load(str(tmp / ONNX_NAME))
    logits, n, diff = _checked_outputs(req, prepared, graph, x, labels)
    test = classification_metrics(y["test"], logits["test"], labels)
    warnings = []
    colour = _colour_warning(logits["val"], lambda b: run_onnx(graph, b), x["val"], y["val"])
    if colour:
        warnings.append(colour)
    if test["top1"] is not None and test["top1"] < 1.5 / len(labels):
        warnings.append(
            f"test top-1 {test['top1']:.3f} is near chance ({1 / len(labels):.3f}): check --labels order, "
            "--mean/--std and --color-order"
        )
    complexity = (
        {
            "params": int(sum(p.numel() for p in prepared.module.parameters())),
            "macs": count_macs(prepared.module, *size),
        }
        if prepared.module is not None  # a torch module (TorchScript sources are imported as their ONNX graph)
        else onnx_macs(graph, size)
    )
    source_sha = sha256_file(req.source)
    val_metrics = classification_metrics(y["val"], logits["val"], labels)
    profile = reference_profile(logits["val"], labels, [image_stats(im) for im in val_images], "val")
    setup_experiment("imports")
    with mlflow.start_run(run_name=f"import-{req.name}") as run:
        mlflow.set_tags(
            {
                "factory.stage": "import",
                "factory.source_kind": kind,
                "factory.source_sha256": source_sha,
                "factory.dataset_hash": manifest.dataset_hash,
            }
        )
        mlflow.log_metrics({"test_top1": test["top1"], "val_top1": val_metrics["top1"], "source_max_abs_diff": diff})
        card = {
            "schema": CARD_SCHEMA,
            "name": req.name,
            "task": "classification",
            "architecture": req.architecture if "weights" in files else f"imported:{kind}",
            "labels": labels,
            "input": input_spec(spec),
            "preprocessing": spec,
            "output": get_task("classification").output(labels),
            "files": files,
            "complexity": complexity,
            "metrics": {"test": test, "val": {"top1": val_metrics["top1"], "n": val_metrics["n"]}},
            "onnx_parity": {"n": n, "max_abs_diff": diff, "tolerance": req.parity_tolerance, "against": "source"},
            "source": {
                "kind": kind,
                "file": str(Path(req.source).resolve()),
                "sha256": source_sha,
                "size_bytes": req.source.stat().st_size,
                **prepared.facts,
                "warnings": warnings,
            },
            "lineage": {
                "imported": {
                    "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "kind": kind,
                    "sha256": source_sha,
                },
                "dataset": manifest.name,
                "dataset_hash": manifest.dataset_hash,
                "dataset_manifest": str(manifest.location),
                "git": git_revision(),
                "mlflow": {
                    "tracking_uri": mlflow.get_tracking_uri(),
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "model_uri": None,
                },
                "packages": package_versions(PACKAGES) | {"edge-model-factory": __version__},
            },
            "reference_profile": profile,
        }
        if "weights" in files:
            cfg = _config_values(req, manifest)
            card["lineage"] |= {"config_values": cfg, "config_hash": config_hash(cfg), "seed": cfg["train"]["seed"]}
        plot_confusion(
            test["confusion_matrix"],
            labels,
            tmp / "confusion_matrix.png",
            f"{req.name} (imported) test top-1 {test['top1']:.4f}",
        )
        write_json(tmp / CARD_NAME, card)
        write_json(
            tmp / "metrics.json",
            {"test_top1": test["top1"], "val_top1": val_metrics["top1"], "source_max_abs_diff": diff},
        )
        mlflow.log_artifact(str(tmp / CARD_NAME))
    return CanonicalModel(Path(req.out), card)
