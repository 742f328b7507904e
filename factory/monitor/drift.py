"""Drift between a reference histogram (the bundle's reference profile) and what devices report.

- PSI, the population stability index: sum (o - r) * ln(o / r) over buckets of proportions.
  Thresholds follow the convention from credit-risk model monitoring (e.g. Yurdakul, 2018,
  "Statistical properties of the population stability index"): < 0.1 no real shift, 0.1-0.25
  moderate, > 0.25 significant. The rollout default ``max_psi: 0.25`` halts on a significant shift.
- JS, the Jensen-Shannon divergence with log base 2 (0 = same, 1 = disjoint). Used for the predicted
  class mix; default ``max_js: 0.1``.
Empty buckets get a small floor (``eps``) so the logarithms stay finite.
"""

from __future__ import annotations

import numpy as np

__all__ = ["psi", "js_divergence", "PSI_MODERATE", "PSI_SIGNIFICANT"]

PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25


def _proportions(counts, eps: float) -> np.ndarray:
    c = np.asarray(counts, np.float64)
    total = c.sum()
    p = c / total if total > 0 else np.full(c.shape, 1.0 / max(len(c), 1))
    p = np.maximum(p, eps)
    return p / p.sum()


def psi(reference, observed, eps: float = 1e-4) -> float | None:
    """Population stability index of ``observed`` against ``reference`` counts; None if either is empty."""
    if np.asarray(observed).sum() <= 0 or np.asarray(reference).sum() <= 0:
        return None
    r, o = _proportions(reference, eps), _proportions(observed, eps)
    return float(np.sum((o - r) * np.log(o / r)))


def js_divergence(reference, observed, eps: float = 1e-12) -> float | None:
    """Jensen-Shannon divergence (base 2, 0..1) of two count histograms; None if either is empty."""
    if np.asarray(observed).sum() <= 0 or np.asarray(reference).sum() <= 0:
        return None
    n = max(len(reference), len(observed))
    r = _proportions(np.pad(np.asarray(reference, np.float64), (0, n - len(reference))), eps)
    o = _proportions(np.pad(np.asarray(observed, np.float64), (0, n - len(observed))), eps)
    m = (r + o) / 2
    return float(0.5 * np.sum(r * np.log2(r / m)) + 0.5 * np.sum(o * np.log2(o / m)))
