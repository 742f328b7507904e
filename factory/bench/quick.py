"""A quick latency probe for builds (batch 1). The full, interleaved harness is `factory bench`."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["quick_latency"]


def quick_latency(
    runner: Callable[[np.ndarray], np.ndarray],
    sample: np.ndarray,
    *,
    warmup: int = 10,
    iterations: int = 300,
    max_seconds: float = 4.0,
) -> dict:
    """Batch-1 latency of one runner in this process: warm-up, then up to ``iterations`` timed runs."""
    x = np.ascontiguousarray(sample[:1])
    for _ in range(warmup):
        runner(x)
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iterations and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - t0) * 1000)
    a = np.asarray(times)
    return {
        "batch": 1,
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p95_ms": round(float(np.percentile(a, 95)), 4),
        "mean_ms": round(float(a.mean()), 4),
    }
