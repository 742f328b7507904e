"""Statistics for benchmarks and gates: percentiles, block-bootstrap intervals, McNemar.

All resampling is seeded, so a report re-analysed gives the same intervals.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["summarize", "median_ci", "ratio_of_medians_ci", "round_ratios", "paired_ratio_ci", "mcnemar_p"]


def summarize(samples_ms: np.ndarray) -> dict:
    """Percentiles, mean, std, min and max of latency samples (ms)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p = np.percentile(a, [50, 90, 95, 99])
    return {
        "n": int(a.size),
        "p50_ms": float(p[0]),
        "p90_ms": float(p[1]),
        "p95_ms": float(p[2]),
        "p99_ms": float(p[3]),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
    }


def _block_indices(n: int, n_boot: int, rng: np.random.Generator, block: int | None = None) -> np.ndarray:
    """Moving-block bootstrap indices: runs of consecutive samples keep their autocorrelation
    (a busy spell on the machine slows many rounds in a row), so intervals are not over-confident.
    Blocks are at most a tenth of the series: fewer than ten blocks would make the resampling degenerate
    (one block as long as the run resamples the run itself, and the interval collapses to a point)."""
    block = max(1, min(n // 10 or 1, block or int(round(n**0.5))))
    starts = rng.integers(0, n - block + 1, (n_boot, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)[:, :n]
    return idx


def _interval(values: np.ndarray, confidence: float) -> list[float]:
    lo, hi = np.percentile(values, [50 * (1 - confidence), 100 - 50 * (1 - confidence)])
    return [float(lo), float(hi)]


def median_ci(
    samples: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0, block: int | None = None
) -> list[float]:
    """Block-bootstrap interval of the median (blocks keep autocorrelated runs together)."""
    a = np.asarray(samples, dtype=np.float64)
    idx = _block_indices(a.size, n_boot, np.random.default_rng(seed), block)
    lo, hi = _interval(np.median(a[idx], axis=1), confidence)
    med = float(np.median(a))
    return [min(lo, med), max(hi, med)]  # a percentile interval can miss its own estimate with few blocks


def _log_interval(point: float, log_boots: np.ndarray, confidence: float, extra_sd: float) -> list[float]:
    """A ratio's interval on the log scale: the bootstrap's spread plus a variance component the run
    itself cannot see (``extra_sd``, measured from repeated A/A runs), combined in quadrature."""
    from ..proportions import z_value

    half = z_value(confidence) * math.sqrt(float(np.std(log_boots, ddof=1)) ** 2 + extra_sd**2)
    return [point * math.exp(-half), point * math.exp(half)]


def ratio_of_medians_ci(
    candidate: np.ndarray,
    baseline: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    block: int | None = None,
    between_run_sd: float = 0.0,
) -> tuple[float, list[float]]:
    """Candidate/baseline ratio of medians of two *separate* runs, with independent block bootstraps
    and the between-run spread (log scale) that no single run can show, measured from A/A runs."""
    c, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    rng = np.random.default_rng(seed)
    ratio = float(np.median(c) / np.median(b))
    boots = np.median(c[_block_indices(c.size, n_boot, rng, block)], axis=1) / np.median(
        b[_block_indices(b.size, n_boot, rng, block)], axis=1
    )
    return ratio, _log_interval(ratio, np.log(boots), confidence, between_run_sd)


def round_ratios(candidate: np.ndarray, baseline: np.ndarray, per_turn: int) -> np.ndarray:
    """Per-round ratios of two artifacts measured in the same interleaved rounds (median of each visit)."""
    c, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    rounds = min(c.size, b.size) // per_turn
    if rounds < 2:
        raise ValueError("paired ratios need at least two rounds")
    rc = np.median(c[: rounds * per_turn].reshape(rounds, per_turn), axis=1)
    rb = np.median(b[: rounds * per_turn].reshape(rounds, per_turn), axis=1)
    return rc / rb


def paired_ratio_ci(
    candidate: np.ndarray,
    baseline: np.ndarray,
    per_turn: int,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    block_rounds: int | None = None,
    session_sd: float = 0.0,
) -> tuple[float, list[float]]:
    """The median of per-round ratios of one interleaved run, with a moving-block bootstrap over rounds.

    Each round's ratio cancels the drift that hit both sides in that round; consecutive rounds are
    still correlated (a busy spell slows several in a row), so rounds are resampled in blocks of
    ``block_rounds`` (about a second of rounds), never one by one. ``session_sd`` adds what one run
    cannot see: two processes holding the same model differ by a little that stays for their whole
    life (memory placement, thread affinity), measured from repeated A/A runs.
    """
    ratios = round_ratios(candidate, baseline, per_turn)
    idx = _block_indices(ratios.size, n_boot, np.random.default_rng(seed), block_rounds)
    point = float(np.median(ratios))
    return point, _log_interval(point, np.log(np.median(ratios[idx], axis=1)), confidence, session_sd)


def mcnemar_p(reference_correct: np.ndarray, candidate_correct: np.ndarray) -> float:
    """Exact two-sided McNemar p-value on the discordant pairs."""
    r, c = np.asarray(reference_correct, bool), np.asarray(candidate_correct, bool)
    b, k = int((r & ~c).sum()), int((~r & c).sum())
    n = b + k
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, k) + 1)) / 2**n
    return float(min(1.0, 2 * tail))
