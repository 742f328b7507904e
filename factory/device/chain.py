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

from ..config import Key, load_config
from ..errors import ConfigError

__all__ = [
    "CHAIN_SCHEMA", "load_chain_config", "Stage", "Chain", "localise_corners", "run_chain", "crop_size",
    "check_stages", "bundle_stage", "open_chain", "open_release",
]  # fmt: skip


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


def _document_areas(corners: np.ndarray) -> np.ndarray:
    """Each predicted quad's share of its frame (shoelace on the corner fractions), at most 1."""
    q = np.asarray(corners, np.float64)[:, :8].reshape(-1, 4, 2)
    x, y = q[..., 0], q[..., 1]
    return np.minimum(0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1)), 1.0)


class Chain:
    """A verified pipeline release, served: what a device runs and counts per frame.

    Telemetry speaks for both stages in one summary of the pipeline release: the classifier's
    confidence and class mix (``confidence``, ``predicted_class``), the localiser's document area as one
    object per frame (``objects``, ``box_area``); the frame's brightness and contrast; the latency of the
    whole chain. The localiser has no score output, so there is no corner confidence to count.
    """

    def __init__(self, manifest, localise: Stage, classify: Stage, scratch=None):
        check_stages(localise, classify)
        self.manifest, self.localise, self.classify = manifest, localise, classify
        self._scratch = scratch  # the members' unpacked files live as long as the chain

    @property
    def labels(self) -> list[str]:
        return self.classify.labels

    def outcomes(self, frames: list[np.ndarray], batch: int = 32) -> list[dict]:
        """What a device counts of each BGR frame (the classifier's confidence and class, the document's area)."""
        out = run_chain(frames, self.localise, self.classify, batch=batch)
        areas = _document_areas(out["corners"])
        return [
            {"confidence": float(c), "cls": int(k), "objects": 1, "box_areas": [float(a)]}
            for c, k, a in zip(out["confidence"], out["pred"], areas, strict=True)
        ]

    def infer(self, frame: np.ndarray) -> tuple[dict, dict]:
        """One BGR frame: ``{"corners" (4, 2) pixels, "label", "confidence", "stage_ms"}`` and its outcome."""
        import time

        t0 = time.perf_counter()
        corners = localise_corners([frame], self.localise, 1)
        t1 = time.perf_counter()
        out = run_chain([frame], self.localise, self.classify, batch=1, corners=corners)
        t2 = time.perf_counter()
        h, w = frame.shape[:2]
        cls, conf = int(out["pred"][0]), float(out["confidence"][0])
        result = {
            "corners": corners[0].reshape(4, 2) * np.float64([w, h]),
            "label": self.labels[cls],
            "confidence": conf,
            "stage_ms": {"localise": (t1 - t0) * 1000, "rectify_classify": (t2 - t1) * 1000},
        }
        area = float(_document_areas(corners)[0])
        return result, {"confidence": conf, "cls": cls, "objects": 1, "box_areas": [area]}

    def smoke(self) -> None:
        """Run once on a blank frame of the localiser's input size: the release must actually run."""
        h, w = self.localise.preprocessing["resize"]
        self.infer(np.zeros((int(h), int(w), 3), np.uint8))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Frames (N, H, W, 3) or one (H, W, 3) through the whole chain: the classifier's top-1 confidence.
        Float input (a generated tensor) is mapped onto grey levels first."""
        x = np.asarray(frames)
        if x.dtype != np.uint8:
            x = np.clip(x * 40.0 + 128.0, 0, 255).astype(np.uint8)
        batch = [x] if x.ndim == 3 else list(x)
        out = run_chain(batch, self.localise, self.classify, batch=len(batch))
        return out["confidence"][:, None]


def open_chain(folder: str | Path, manifest, public_key=None) -> Chain:
    """The pipeline bundle at ``folder`` (already verified as a bundle) with its members unpacked into a
    scratch folder, each verified and matched against the signed pipeline; BundleError otherwise."""
    import tempfile

    from ..bundle.pipeline import unpack_members

    scratch = tempfile.TemporaryDirectory(prefix="factory-chain-")
    members = unpack_members(folder, manifest, scratch.name, public_key)
    localise, classify = (bundle_stage(members[s], public_key) for s in ("localise", "classify"))
    return Chain(manifest, localise, classify, scratch)


def open_release(folder: str | Path, public_key) -> Chain:
    """A pipeline release, verified whole (its signature, its files, every member), ready to run."""
    from ..bundle.pipeline import is_pipeline
    from ..errors import BundleError
    from .loader import open_bundle

    manifest, served = open_bundle(Path(folder), public_key)
    if not is_pipeline(manifest) or not isinstance(served, Chain):
        raise BundleError(f"{folder} is a bundle of one model ({manifest.key}), not a pipeline release")
    return served
