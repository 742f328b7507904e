"""The ID-document flow on a device: localise -> rectify -> classify, from a verified pipeline release.

A chain is two models: a document localiser (four corners per frame) and a classifier of the document
flattened by those corners (``factory.tasks.localisation.rectify`` at the classifier's input size). The
same code runs the canonical pair at build time (its stages given by the build side), a target's pair of
bundles, and a device's release.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError

__all__ = ["Stage", "localise_corners", "run_chain", "crop_size", "check_stages", "bundle_stage", "open_release"]


@dataclass
class Stage:
    """One model of the chain: how to run a batch, how a frame becomes its input, what its outputs mean."""

    runner: Callable[[np.ndarray], np.ndarray]
    preprocessing: dict
    labels: list[str]
    task: str


def crop_size(preprocessing: dict) -> tuple[int, int]:
    """The rectified crop's (width, height) for a classifier with this ``preprocessing``: its input size, so
    nothing is resized twice."""
    h, w = preprocessing["resize"]
    return int(w), int(h)


def check_stages(localise: Stage, classify: Stage) -> None:
    """A localiser first and a classifier second, or a ConfigError saying which is which."""
    if localise.task != "document-localisation":
        raise ConfigError(f"the localise stage is a {localise.task} model, not a document-localisation one")
    if classify.task != "classification":
        raise ConfigError(f"the classify stage is a {classify.task} model, not a classification one")


def _batches(runner, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])


def localise_corners(frames: list[np.ndarray], localise: Stage, batch: int = 32) -> np.ndarray:
    """The localiser's corners (N, 8 fractions of the frame) of BGR frames."""
    from ..preprocess import preprocess

    return np.asarray(_batches(localise.runner, preprocess(frames, localise.preprocessing), batch), np.float64)[:, :8]


def run_chain(frames: list[np.ndarray], localise: Stage, classify: Stage, *, batch: int = 32, corners=None) -> dict:
    """Corners, predicted class and confidence of every BGR frame. ``corners`` (N, 8 fractions) skips the
    localiser (ground-truth crops, to see what the localiser's error costs)."""
    from ..preprocess import preprocess
    from ..tasks.localisation import rectify

    if corners is None:
        corners = localise_corners(frames, localise, batch)
    size = crop_size(classify.preprocessing)
    crops = [rectify(f, c, size) for f, c in zip(frames, corners, strict=True)]
    logits = _batches(classify.runner, preprocess(crops, classify.preprocessing), batch).astype(np.float64)
    z = np.exp(logits - logits.max(1, keepdims=True))
    probs = z / z.sum(1, keepdims=True)
    return {"corners": corners, "pred": probs.argmax(1), "confidence": probs.max(1)}


def bundle_stage(folder: str | Path, public_key) -> Stage:
    """A verified bundle as a chain stage."""
    from .loader import open_bundle

    m, runner = open_bundle(Path(folder), public_key)
    return Stage(runner, m.preprocessing, m.labels, m.validation.get("task", "classification"))


def open_release(folder: str | Path, public_key) -> tuple[dict, Stage, Stage]:
    """A verified release's document and its two stages, ready for :func:`factory.pipeline.chain.run_chain`."""
    from ..bundle.pipeline import STAGES, verify_release

    doc = verify_release(folder, public_key)
    localise, classify = (bundle_stage(Path(folder) / s, public_key) for s in STAGES)
    check_stages(localise, classify)
    return doc, localise, classify
