"""A quick latency probe for builds (batch 1). The full, interleaved harness is `factory bench`."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["quick_latency", "postprocess_latency"]


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


def postprocess_latency(task, outputs: np.ndarray, *, frames: int = 200, max_seconds: float = 2.0) -> dict:
    """The task's post-processing (decode, NMS...) of one frame's raw output at a time, over up to
    ``frames`` real outputs: what a device spends after the model on every frame."""
    times = []
    deadline = time.perf_counter() + max_seconds
    for i in range(min(frames, len(outputs))):
        one = np.ascontiguousarray(outputs[i : i + 1])
        t0 = time.perf_counter()
        task.postprocess(one)
        times.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > deadline:
            break
    if not times:
        return {}
    a = np.asarray(times)
    return {"postprocess_p50_ms": round(float(np.percentile(a, 50)), 4),
            "postprocess_p95_ms": round(float(np.percentile(a, 95)), 4)}  # fmt: skip
