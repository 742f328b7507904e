"""Fixed-bucket histograms shared by the dataset profile, the model card, device telemetry and drift.

The bucket edges are constants of the protocol: a histogram made on a device merges with one made
in training only because both use these edges. Changing them is a schema change. This module is on
the floor of the package (it imports nothing of the factory), so data, train, device and monitor
all read the same definitions.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = [
    "BRIGHTNESS_EDGES",
    "CONTRAST_EDGES",
    "CONFIDENCE_EDGES",
    "LATENCY_EDGES_MS",
    "HISTOGRAMS",
    "TASK_HISTOGRAMS",
    "OBJECTS_EDGES",
    "BOX_AREA_EDGES",
    "image_stats",
    "histogram",
    "percentile_from_hist",
]

# Mean grey level (0-255) and its standard deviation (0-128) of an image, 16 buckets each.
BRIGHTNESS_EDGES: list[float] = [float(x) for x in np.linspace(0, 256, 17)]
CONTRAST_EDGES: list[float] = [float(x) for x in np.linspace(0, 128, 17)]
# Top-1 softmax probability, 10 buckets.
CONFIDENCE_EDGES: list[float] = [round(float(x), 2) for x in np.linspace(0, 1, 11)]
# Latency in milliseconds: 5 us .. ~13 s, 16 buckets per decade (each 10**(1/16) ~ 1.155x wider),
# fine enough that a p95 read from a merged histogram tells a 30% regression from noise. The floor
# was 50 us in telemetry schema 1: a small model under ONNX Runtime's `all` level runs below that,
# and every inference then fell into one bucket, hiding any slowdown.
LATENCY_EDGES_MS: list[float] = [round(0.005 * 10 ** (k / 16), 7) for k in range(104)]
# Objects a frame's model output holds (detection: boxes above the deployment threshold), 0..9 and 10+.
OBJECTS_EDGES: list[float] = [float(k) for k in range(12)]
# Each object's box area as a fraction of the frame.
BOX_AREA_EDGES: list[float] = [0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32, 0.48, 1.0]
# Histograms a summary carries when its task reports objects (detection, document localisation).
TASK_HISTOGRAMS: dict[str, list[float]] = {"objects": OBJECTS_EDGES, "box_area": BOX_AREA_EDGES}
# The histograms every telemetry summary carries, by field name.
HISTOGRAMS: dict[str, list[float]] = {
    "latency_ms": LATENCY_EDGES_MS,
    "confidence": CONFIDENCE_EDGES,
    "brightness": BRIGHTNESS_EDGES,
    "contrast": CONTRAST_EDGES,
}


def image_stats(image: np.ndarray) -> tuple[float, float]:
    """(brightness, contrast) of a uint8 image: mean and standard deviation of its grey level."""
    grey = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    return float(grey.mean()), float(grey.std())


def histogram(values: Iterable[float], edges: list[float]) -> list[int]:
    """Counts per bucket; values beyond the ends fall into the first/last bucket (nothing is lost)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return [0] * (len(edges) - 1)
    idx = np.clip(np.searchsorted(np.asarray(edges), v, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(int).tolist()


def percentile_from_hist(counts, edges, q: float) -> float | None:
    """Percentile from a histogram (linear within the bucket); None for an empty histogram."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    target = q / 100 * total
    cum = np.cumsum(counts)
    i = min(int(np.searchsorted(cum, target)), len(counts) - 1)
    before = cum[i - 1] if i else 0.0
    frac = (target - before) / counts[i] if counts[i] else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))
