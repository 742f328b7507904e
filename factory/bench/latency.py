"""Interleaved latency measurement: A, B, C, B, C, A, ... so that machine drift hits all alike.

Every round times one batch-1 inference of each artifact, in a seeded random order (no artifact
is always first). Measurement stops at a time budget or a round count, whichever comes first.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .. import progress
from .stats import median_ci, summarize

__all__ = ["measure_interleaved", "environment"]


def environment(artifacts) -> dict:
    from ..lineage import host_info

    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        load = None
    return {"host": host_info(), "load_average": load,
            "runtimes": sorted({f"{a.runtime['backend']} {a.runtime['version']}" for a in artifacts}),
            "threads": {a.id: a.runtime.get("threads") for a in artifacts}}


def measure_interleaved(artifacts, *, seconds: float = 10.0, max_rounds: int = 100_000, warmup: int = 20,
                        min_rounds: int = 30, seed: int = 0, confidence: float = 0.95) -> dict:
    """Return {artifact id: latency stats with raw samples} plus the settings and environment."""
    rng = np.random.default_rng(seed)
    inputs = {a.id: np.ascontiguousarray(rng.standard_normal(a.input_shape).astype(np.float32)) for a in artifacts}
    env_before = environment(artifacts)
    for a in artifacts:  # warm-up: allocations, JIT, caches
        for _ in range(warmup):
            a.runner(inputs[a.id])
    samples: dict[str, list[float]] = {a.id: [] for a in artifacts}
    order = list(range(len(artifacts)))
    timer = time.perf_counter_ns
    deadline = time.perf_counter() + seconds
    rounds = 0
    with progress.bar("measuring (interleaved)", int(seconds)) as tick:
        last_tick = time.perf_counter()
        while rounds < max_rounds and (time.perf_counter() < deadline or rounds < min_rounds):
            rng.shuffle(order)
            for i in order:
                a = artifacts[i]
                x = inputs[a.id]
                t0 = timer()
                a.runner(x)
                samples[a.id].append((timer() - t0) / 1e6)
            rounds += 1
            now = time.perf_counter()
            if now - last_tick >= 1.0:
                tick(1)
                last_tick = now
    results = {}
    for a in artifacts:
        s = np.asarray(samples[a.id])
        stats = summarize(s)
        stats["median_ci"] = median_ci(s, confidence)
        stats["samples_ms"] = [round(v, 5) for v in s.tolist()]
        results[a.id] = stats
    env = environment(artifacts)
    env["load_average_before"] = env_before["load_average"]
    return {"rounds": rounds, "seconds": seconds, "warmup": warmup, "batch": 1, "confidence": confidence,
            "interleaved": True, "seed": seed, "environment": env, "artifacts": results}
