"""The ID-document flow as one unit: localise -> rectify -> classify.

A chain is two models: a document localiser (four corners per frame) and a classifier of the document
flattened by those corners (``factory.tasks.localisation.rectify`` at the classifier's input size). Its
one figure is end to end: the classifier's top-1 on the localiser's crops of the test frames, so a corner
error that cuts the document off counts as the classification loss it causes. The same code runs the
canonical pair (ONNX), a target's pair of bundles, and a device's release.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Key, load_config
from ..errors import ConfigError

__all__ = [
    "CHAIN_SCHEMA",
    "Stage",
    "load_chain_config",
    "run_chain",
    "crop_size",
    "check_stages",
    "canonical_stage",
    "bundle_stage",
]

CHAIN_SCHEMA = {
    "name": Key(str, help="the pipeline's name, e.g. id-docs-flow"),
    "version": Key(str, "0.1.0", "the pipeline's own semantic version (a new stage bundle is a new version)"),
    "localise": Key(str, help="canonical model directory of the document localiser (task document-localisation)"),
    "classify": Key(str, help="canonical model directory of the classifier of rectified crops"),
    "data": Key(str, help="dataset of frames with a quad and a label each (validation of the chain)"),
    "accuracy": {
        "max_drop_pt": Key(float, 1.0, "end-to-end top-1 margin vs the canonical pair, points"),
        "confidence": Key(float, 0.95, "confidence of the paired interval"),
        "inconclusive": Key(
            str, "fail", "when the test split cannot tell: fail | warn | pass", choices=["fail", "warn", "pass"]
        ),
    },
}


def load_chain_config(path) -> dict:
    """A pipeline YAML (see configs/pipelines/id-docs.yaml), validated."""
    return load_config(path, CHAIN_SCHEMA)


@dataclass
class Stage:
    """One model of the chain: how to run a batch, how a frame becomes its input, what its outputs mean."""

    runner: Callable[[np.ndarray], np.ndarray]
    preprocessing: dict
    labels: list[str]
    task: str


def crop_size(classify: Stage) -> tuple[int, int]:
    """The rectified crop's (width, height): the classifier's input size, so nothing is resized twice."""
    h, w = classify.preprocessing["resize"]
    return int(w), int(h)


def check_stages(localise: Stage, classify: Stage) -> None:
    """A localiser first and a classifier second, or a ConfigError saying which is which."""
    if localise.task != "document-localisation":
        raise ConfigError(f"the localise stage is a {localise.task} model, not a document-localisation one")
    if classify.task != "classification":
        raise ConfigError(f"the classify stage is a {classify.task} model, not a classification one")


def _batches(runner, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])


def run_chain(frames: list[np.ndarray], localise: Stage, classify: Stage, *, batch: int = 32, corners=None) -> dict:
    """Corners, predicted class and confidence of every BGR frame. ``corners`` (N, 8 fractions) skips the
    localiser (ground-truth crops, to see what the localiser's error costs)."""
    from ..preprocess import preprocess
    from ..tasks.localisation import rectify

    if corners is None:
        raw = _batches(localise.runner, preprocess(frames, localise.preprocessing), batch)
        corners = np.asarray(raw, np.float64)[:, :8]
    size = crop_size(classify)
    crops = [rectify(f, c, size) for f, c in zip(frames, corners, strict=True)]
    logits = _batches(classify.runner, preprocess(crops, classify.preprocessing), batch).astype(np.float64)
    z = np.exp(logits - logits.max(1, keepdims=True))
    probs = z / z.sum(1, keepdims=True)
    return {"corners": corners, "pred": probs.argmax(1), "confidence": probs.max(1)}


def canonical_stage(model_dir: str | Path) -> Stage:
    """A canonical model as a chain stage, run by ONNX Runtime on its ONNX graph (the reference)."""
    from ..train.canonical import load_canonical, onnx_logits

    m = load_canonical(model_dir)
    return Stage(lambda x: onnx_logits(m.onnx, x), m.card["preprocessing"], m.card["labels"], m.task)


def bundle_stage(folder: str | Path, public_key) -> Stage:
    """A verified bundle as a chain stage."""
    from ..device.loader import open_bundle

    m, runner = open_bundle(Path(folder), public_key)
    return Stage(runner, m.preprocessing, m.labels, m.validation.get("task", "classification"))
