"""The benchmark statistics on known inputs: percentiles, intervals of ratios and of paired accuracy."""

import numpy as np
import pytest

from factory.bench.budgets import check_budgets, unresolvable
from factory.bench.stats import mcnemar_p, median_ci, paired_ratio_ci, ratio_of_medians_ci, round_ratios, summarize
from factory.proportions import images_to_resolve, non_inferiority, tango_interval, wilson_interval


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


def test_ratio_of_medians_of_separate_runs_is_widened_by_the_between_run_spread():
    rng = np.random.default_rng(1)
    a, b = 2 * rng.lognormal(0.0, 0.05, 600), rng.lognormal(0.0, 0.05, 600)
    ratio, (lo, hi) = ratio_of_medians_ci(a, b, block=1)
    assert lo < 2.0 < hi and hi - lo < 0.05
    _, (lo2, hi2) = ratio_of_medians_ci(a, b, block=1, between_run_sd=0.05)
    assert lo2 < lo and hi2 > hi and np.log(hi2 / lo2) > 2 * 1.96 * 0.05


def test_paired_ratio_per_round_and_its_block_bootstrap():
    b = np.random.default_rng(2).lognormal(0.0, 0.2, 500)
    point, (lo, hi) = paired_ratio_ci(1.5 * b, b, per_turn=5)
    assert point == pytest.approx(1.5) and lo == pytest.approx(1.5) and hi == pytest.approx(1.5)
    _, (lo, hi) = paired_ratio_ci(1.5 * b, b, per_turn=5, session_sd=0.02)
    assert lo == pytest.approx(1.5 * np.exp(-1.96 * 0.02), rel=1e-3) and hi == pytest.approx(
        1.5 * np.exp(1.96 * 0.02), rel=1e-3
    )
    with pytest.raises(ValueError, match="two rounds"):
        paired_ratio_ci(b[:5], b[:5], per_turn=5)


def test_autocorrelated_rounds_get_wider_intervals_from_blocks():
    rng = np.random.default_rng(3)
    drift = np.repeat(rng.normal(0, 0.05, 40), 10)  # 400 rounds in spells of 10 that slow the candidate alone
    cand = np.repeat(np.exp(drift + rng.normal(0, 0.01, 400)), 5)
    base = np.ones(2000)
    assert round_ratios(cand, base, 5).size == 400
    _, one = paired_ratio_ci(cand, base, 5, block_rounds=1)
    _, blocks = paired_ratio_ci(cand, base, 5, block_rounds=10)
    assert (blocks[1] - blocks[0]) > 1.5 * (one[1] - one[0])


def test_tango_interval_matches_the_published_example():
    # Cavo et al. (2012), Fagerland, Lydersen & Laake (2017) chapter 8: -0.0621 (95% CI -0.1240 to -0.0054)
    lo, hi = tango_interval(6, 16, 161)
    assert lo == pytest.approx(-0.1240, abs=5e-5) and hi == pytest.approx(-0.0054, abs=5e-5)


def test_tango_interval_does_not_collapse_when_no_image_disagrees():
    lo, hi = tango_interval(0, 0, 481)
    assert hi == pytest.approx(1.96**2 / (481 + 1.96**2), rel=1e-3) and lo == pytest.approx(-hi)  # about 0.79 pt


def test_wilson_interval():
    lo, hi = wilson_interval(481, 481)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(481 / (481 + 1.96**2), rel=1e-3)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


@pytest.mark.parametrize(
    "lost,gained,n,margin,verdict",
    [
        (0, 0, 1280, 1.0, "pass"),
        (5, 0, 1280, 1.0, "pass"),
        (6, 0, 1280, 1.0, "inconclusive"),
        (40, 0, 1280, 1.0, "fail"),
        (0, 0, 481, 0.2, "inconclusive"),  # a margin finer than 481 images can resolve
        (1, 0, 481, 1.0, "inconclusive"),
        (10, 10, 1280, 1.0, "pass"),  # as many gained as lost
        (20, 20, 1280, 1.0, "inconclusive"),  # many disagreements widen the interval
    ],
)
def test_non_inferiority_at_its_boundaries(lost, gained, n, margin, verdict):
    r = non_inferiority(lost, gained, n, margin)
    assert r["verdict"] == verdict, r
    if verdict == "inconclusive":
        need = images_to_resolve(lost, gained, n, margin)
        assert f"about {need:,} would" in r["why"] and need > n
        assert non_inferiority(lost * need // n, gained * need // n, need, margin)["verdict"] == "pass"


def test_budget_checks_carry_intervals_and_verdicts():
    checks = {
        c.check: c
        for c in check_budgets(
            {"max_accuracy_drop_pt": 1.0, "min_top1_agreement": 0.98, "max_size_mb": 5},
            paired=(6, 0, 1280),
            agreement=(1274, 1280),
            size_mb=6.0,
        )
    }
    assert checks["accuracy_drop"].verdict == "inconclusive" and not checks["accuracy_drop"].passed
    assert checks["accuracy_drop"].interval[1] > 1.0 and "about" in checks["accuracy_drop"].why
    assert checks["top1_agreement"].verdict == "pass" and checks["size"].verdict == "fail"
    assert checks["accuracy_drop"].to_dict()["rule"].startswith("non-inferiority, Tango")


def test_a_test_split_too_small_for_any_candidate():
    assert "about 1,917 would" in unresolvable({"max_accuracy_drop_pt": 0.2}, 481)
    assert "cannot be shown on any test split" in unresolvable({"max_accuracy_drop_pt": 0.0}, 481)  # was a ZeroDivision
    assert unresolvable({"max_accuracy_drop_pt": 1.0, "min_top1_agreement": 0.98}, 1280) is None
    assert "cannot show top-1 agreement >= 0.995" in unresolvable({"min_top1_agreement": 0.995}, 481)


def test_mcnemar_exact():
    ref = np.array([True] * 5 + [True] * 95)
    cand = np.array([False] * 5 + [True] * 95)
    assert mcnemar_p(ref, cand) == pytest.approx(2 / 32)  # 5 discordant pairs, all one way
    assert mcnemar_p(ref, ref) == 1.0
