"""The contract every task fulfils (see the package docstring for who uses which part)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats import BRIGHTNESS_EDGES, CONFIDENCE_EDGES, CONTRAST_EDGES, TASK_HISTOGRAMS, histogram

__all__ = ["Task", "Quality", "paired_bootstrap", "outcome_profile"]


@dataclass(frozen=True)
class Quality:
    """How a task's :meth:`Task.parity` report states its quality and its loss against the canonical model:
    the one place that maps a parity report to what budgets, the search, the repair and tables judge."""

    name: str  # the headline figure, for tables: "top-1", "mAP@0.5"
    value: str  # its key in the parity report
    loss: str  # the loss's key (points, higher is worse)
    check: str  # the budget check that judges the loss
    budget: str  # the profile's budget key that limits it
    words: str  # what the loss is called: "drop", "mAP@0.5 drop"
    interval: str | None = None  # the loss's paired-bootstrap interval key (None: judged on paired counts)
    unit: str = " pt"


class Task:
    """One kind of model output. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    annotation: str = ""  # what a record must carry: "label" | "quad" | "boxes"
    primary: str = ""  # the metric budgets and gates judge
    higher_is_better: bool = True
    quality: Quality  # how its parity report states quality and loss (the subclass sets it)

    def __init__(self, spec: dict | None = None):
        self.spec = dict(spec or {})  # the card's (or bundle manifest's) ``output`` block: what the raw tensor holds

    def output(self, classes: list[str], **geometry) -> dict:
        """The card's ``output`` block: the raw tensor the model graph returns."""
        raise NotImplementedError

    def targets(self, records: list, classes: list[str]) -> np.ndarray:
        """Targets of dataset records (label indices; normalized corners...)."""
        raise NotImplementedError

    def postprocess(self, raw: np.ndarray) -> Any:
        """Raw outputs of a batch -> task outputs (NumPy; shared by every runtime and the device)."""
        raise NotImplementedError

    def metrics(self, raw: np.ndarray, targets: np.ndarray) -> dict:
        """The task's metrics of raw outputs against targets."""
        raise NotImplementedError

    def parity(self, candidate: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> dict:
        """A candidate's raw outputs against the canonical model's on the same images."""
        raise NotImplementedError

    def outcomes(self, raw: np.ndarray) -> list[dict]:
        """What a device counts of each frame's raw output (telemetry): ``confidence`` (0..1) and ``cls``
        (an index into :meth:`telemetry_classes`), plus ``objects`` and ``box_areas`` (fractions of the
        frame) for a task that finds objects."""
        raise NotImplementedError

    def device_output(self, raw: np.ndarray, frame: np.ndarray, labels: list[str]) -> tuple[Any, dict]:
        """One frame on a device: (what the agent returns to the application, the outcome telemetry counts).
        ``raw``: the model's output for this frame (batch of 1); ``frame``: the BGR frame it saw."""
        raise NotImplementedError

    def records(self, raw: np.ndarray, labels: list[str]) -> list:
        """The task's outputs of a batch as plain, JSON-able values, one per image (the MLflow pyfunc's answer)."""
        raise NotImplementedError

    def telemetry_classes(self, labels: list[str]) -> list[str]:
        """The buckets of the ``predicted_class`` count telemetry carries."""
        return list(labels)

    def reference_profile(
        self, raw: np.ndarray, labels: list[str], stats: list[tuple[float, float]], split: str
    ) -> dict:
        """What the model says and sees on held-out frames, counted as a device counts it (telemetry's
        histograms): the baseline monitoring compares devices with."""
        return outcome_profile(self.outcomes(raw), self.telemetry_classes(labels), stats, split)

    def loss_interval(self, parity: dict) -> tuple[float, tuple[float, float], str]:
        """(the loss against the canonical model, its interval, the budget key that limits it) of a
        :meth:`parity` report: what the int8 repair judges for a task with its own metric."""
        q = self.quality
        if q.interval is None:
            raise NotImplementedError(f"{self.name} judges its loss on paired counts, not an interval")
        return parity[q.loss], tuple(parity[q.interval]), q.budget

    def summary(self, metrics: dict) -> str:
        """One line of the task's metrics for people (``metrics`` as :meth:`metrics` returns them)."""
        return f"{self.primary} {metrics[self.primary]}"

    # -- training of spatial tasks (factory.train.spatial): the target's points move with augmentation --
    upsample: int = 4  # how much the head enlarges the backbone's feature map

    def points(self, target: np.ndarray) -> np.ndarray:
        """(K, 2) points of one image's target, as fractions of the frame, that a geometric warp moves."""
        raise NotImplementedError

    def moved(self, target: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The target after its points were moved to ``points`` (same order as :meth:`points`)."""
        raise NotImplementedError

    def train_target(self, target: np.ndarray) -> np.ndarray:
        """What the loss compares the model's output with, for one image."""
        return target

    def distill_loss(self):
        """``fn(student_raw, teacher_raw)``: how far a student's raw output is from a teacher's (a pruned copy
        fine-tuned against the canonical model). By default the task's own loss with the teacher's output as
        the target, for a task whose training target has the raw output's form (corners)."""
        return self.loss()


def paired_bootstrap(
    candidate: np.ndarray, reference: np.ndarray, rounds: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(candidate - reference) over images resampled in pairs (same images
    for both each round): the interval of a per-image metric's difference."""
    d = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    if len(d) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (rounds, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def outcome_profile(out: list[dict], classes: list[str], stats: list[tuple[float, float]], split: str) -> dict:
    """A reference profile from per-frame outcomes (``{"confidence", "cls"}``, plus ``"objects"`` and
    ``"box_areas"`` for tasks that find objects) and the frames' (brightness, contrast)."""
    predicted = np.bincount([o["cls"] for o in out], minlength=len(classes)).astype(int).tolist()
    profile = {
        "split": split,
        "n": len(out),
        "predicted_class": {"classes": list(classes), "counts": predicted},
        "confidence": {
            "edges": CONFIDENCE_EDGES,
            "counts": histogram([o["confidence"] for o in out], CONFIDENCE_EDGES),
        },
        "brightness": {"edges": BRIGHTNESS_EDGES, "counts": histogram([v[0] for v in stats], BRIGHTNESS_EDGES)},
        "contrast": {"edges": CONTRAST_EDGES, "counts": histogram([v[1] for v in stats], CONTRAST_EDGES)},
    }
    if out and "objects" in out[0]:
        edges = TASK_HISTOGRAMS
        profile["objects"] = {
            "edges": edges["objects"],
            "counts": histogram([o["objects"] for o in out], edges["objects"]),
        }
        areas = [a for o in out for a in o["box_areas"]]
        profile["box_area"] = {"edges": edges["box_area"], "counts": histogram(areas, edges["box_area"])}
    return profile
