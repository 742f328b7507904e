"""The contract every task fulfils (see the package docstring for who uses which part)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Task", "paired_bootstrap"]


class Task:
    """One kind of model output. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    annotation: str = ""  # what a record must carry: "label" | "quad" | "boxes"
    primary: str = ""  # the metric budgets and gates judge
    higher_is_better: bool = True

    def output(self, classes: list[str]) -> dict:
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
