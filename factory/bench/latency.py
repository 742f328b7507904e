"""Interleaved latency measurement: A, B, C, B, C, A, ... so that machine drift hits all alike.

Every artifact runs in its own worker process (see :mod:`factory.bench.worker`). Every round visits
each artifact once, in a seeded random order (no artifact is always first). A visit ("turn") runs
the model untimed for ``settle_ms`` (at least once), then times ``per_turn`` batch-1 runs back to
back: the runtime that ran just before leaves spinning threads and cold caches behind, which made
the first runs after a switch up to 2x slower here. Measurement stops at a time budget or a round
count, whichever comes first.

This machine drifts by tens of percent over seconds (a 60 s loop of one LiteRT model: 2-second
medians from 0.52 to 0.88 ms). Intervals are therefore block-bootstrapped over ~1 s blocks of
rounds, so a reported interval includes the drift seen during the run; ratios between artifacts
measured in the same rounds cancel most of it.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .. import progress
from .stats import median_ci, summarize

__all__ = ["measure_interleaved", "environment"]


def environment(artifacts) -> dict:
    """Host facts, load average, runtimes and threads of a benchmark run."""
    from ..lineage import host_info

    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        load = None
    return {
        "host": host_info(),
        "load_average": load,
        "runtimes": sorted({f"{a.runtime['backend']} {a.runtime['version']}" for a in artifacts}),
        "threads": {a.id: a.runtime.get("threads") for a in artifacts},
    }


def measure_interleaved(
    artifacts,
    *,
    seconds: float = 10.0,
    max_rounds: int = 100_000,
    warmup: int = 20,
    min_rounds: int = 30,
    seed: int = 0,
    confidence: float = 0.95,
    settle_ms: float = 5.0,
    per_turn: int = 5,
    gap_ms: float = 0.0,
    warmup_seconds: float = 1.0,
    block_seconds: float = 1.0,
) -> dict:
    """Return {artifact id: latency stats with raw samples} plus the settings and environment.

    Each artifact runs in its own worker process (see :mod:`factory.bench.worker`).
    """
    from .worker import Worker, WorkerSpec

    rng = np.random.default_rng(seed)
    env_before = environment(artifacts)
    workers = [
        Worker(WorkerSpec(a.source or a.path, int(a.runtime.get("threads") or 2), tuple(a.input_shape), seed))
        for a in artifacts
    ]
    try:
        for w in workers:
            w.wait_ready()
        for w in workers:  # from now on only the worker whose turn it is runs (see factory.bench.worker)
            w.pause()
        for w in workers:  # warm-up: allocations, JIT, caches, and the CPU's own clock and power state
            w.turn(warmup, 0)
            end = time.perf_counter() + warmup_seconds
            while time.perf_counter() < end:
                w.turn(10, 0)
        samples: dict[str, list[float]] = {a.id: [] for a in artifacts}
        order = list(range(len(artifacts)))
        deadline = time.perf_counter() + seconds
        rounds = 0
        with progress.bar("measuring (interleaved)", int(seconds)) as tick:
            last_tick = time.perf_counter()
            while rounds < max_rounds and (time.perf_counter() < deadline or rounds < min_rounds):
                rng.shuffle(order)
                for i in order:
                    if gap_ms > 0:
                        time.sleep(gap_ms / 1000)  # let the previous worker's spinning threads park
                    samples[artifacts[i].id].extend(workers[i].turn(settle_ms, per_turn))
                rounds += 1
                now = time.perf_counter()
                if now - last_tick >= 1.0:
                    tick(1)
                    last_tick = now
        elapsed = max(seconds - (deadline - time.perf_counter()), 1e-3)
    finally:
        for w in workers:
            w.close()
    block = per_turn * max(1, int(round(rounds / elapsed * block_seconds)))
    results = {}
    for a in artifacts:
        s = np.asarray(samples[a.id])
        stats = summarize(s)
        stats["median_ci"] = median_ci(s, confidence, block=block)
        stats["samples_ms"] = [round(v, 5) for v in s.tolist()]
        results[a.id] = stats
    env = environment(artifacts)
    env["load_average_before"] = env_before["load_average"]
    return {
        "rounds": rounds,
        "seconds": seconds,
        "warmup": warmup,
        "settle_ms": settle_ms,
        "per_turn": per_turn,
        "gap_ms": gap_ms,
        "block_samples": block,
        "batch": 1,
        "confidence": confidence,
        "interleaved": True,
        "process_isolated": True,
        "isolation": "others stopped (SIGSTOP) while one is timed" if Worker.isolated else "none",
        "seed": seed,
        "environment": env,
        "artifacts": results,
    }
