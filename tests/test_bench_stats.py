"""The benchmark statistics on known inputs: percentiles, bootstrap intervals, McNemar."""

import numpy as np
import pytest

from factory.bench.stats import mcnemar_p, median_ci, paired_drop_ci, paired_ratio_ci, ratio_of_medians_ci, summarize


def test_summarize_percentiles():
    s = summarize(np.arange(1, 101, dtype=float))
    assert s["n"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p95_ms"] == pytest.approx(95.05)
    assert s["min_ms"] == 1 and s["max_ms"] == 100


def test_median_interval_contains_the_median_and_covers_the_truth():
    covered = 0
    for seed in range(100):
        x = np.random.default_rng(seed).lognormal(0.0, 0.3, 400)  # true median 1.0
        lo, hi = median_ci(x, 0.95, n_boot=500, block=1)
        assert lo <= np.median(x) <= hi
        covered += lo <= 1.0 <= hi
    assert covered >= 88  # a 95% interval: 95 expected, 88 is the 1-in-a-thousand lower tail of Binomial(100, .95)


def test_ratio_of_medians():
    rng = np.random.default_rng(1)
    b = rng.lognormal(0.0, 0.05, 600)
    ratio, (lo, hi) = ratio_of_medians_ci(2 * b, b, paired=True, block=1)
    assert ratio == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    ratio, (lo, hi) = ratio_of_medians_ci(2 * b, rng.lognormal(0.0, 0.05, 600), paired=False, block=1)
    assert lo < 2.0 < hi and hi - lo < 0.05
    with pytest.raises(ValueError):
        ratio_of_medians_ci(b[:10], b, paired=True)


def test_paired_ratio_per_round():
    b = np.random.default_rng(2).lognormal(0.0, 0.2, 500)
    point, (lo, hi) = paired_ratio_ci(1.5 * b, b, per_turn=5)
    assert point == pytest.approx(1.5) and lo == pytest.approx(1.5) and hi == pytest.approx(1.5)
    with pytest.raises(ValueError, match="two rounds"):
        paired_ratio_ci(b[:5], b[:5], per_turn=5)


def test_paired_drop_interval():
    ref = np.array([True] * 90 + [False] * 10)
    drop, (lo, hi) = paired_drop_ci(ref, ref.copy())
    assert drop == 0 and lo == 0 and hi == 0
    worse = ref.copy()
    worse[:9] = False  # 9 of 100 images lost
    drop, (lo, hi) = paired_drop_ci(ref, worse)
    assert drop == pytest.approx(9.0) and 3.0 < lo < 9.0 < hi <= 16.0


def test_mcnemar_exact():
    ref = np.array([True] * 5 + [True] * 95)
    cand = np.array([False] * 5 + [True] * 95)
    assert mcnemar_p(ref, cand) == pytest.approx(2 / 32)  # 5 discordant pairs, all one way
    assert mcnemar_p(ref, ref) == 1.0
