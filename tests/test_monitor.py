"""The monitor's pure rules, unit by unit: PSI and JS drift, one window's verdict, a stage's decision."""

import math

import numpy as np
import pytest

from factory.monitor.drift import js_divergence, psi
from factory.monitor.health import decide, judge, window_figures
from factory.monitor.summaries import merge
from factory.stats import HISTOGRAMS, histogram, percentile_from_hist

RULES = {
    "min_inferences": 50,
    "max_error_rate": 0.02,
    "max_latency_p95_ratio": 1.2,
    "max_psi": 0.25,
    "max_js": 0.1,
    "windows_to_halt": 2,
    "auto_advance": True,
    "auto_rollback": True,
}


def test_psi_of_identical_histograms_is_zero_and_grows_with_the_shift():
    assert psi([50, 50], [50, 50]) == pytest.approx(0.0)
    # (0.9-0.5) ln(0.9/0.5) + (0.1-0.5) ln(0.1/0.5)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), rel=1e-6)
    assert psi([50, 50], [90, 10]) < psi([50, 50], [99, 1])
    assert psi([50, 50], [0, 0]) is None and psi([0, 0], [1, 1]) is None


def test_psi_is_scale_free():
    assert psi([5, 5], [9, 1]) == pytest.approx(psi([500, 500], [900, 100]))


def test_js_divergence_bounds():
    assert js_divergence([3, 3, 3], [1, 1, 1]) == pytest.approx(0.0, abs=1e-9)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-6)  # disjoint: 1 bit
    assert 0 < js_divergence([1, 1], [3, 1]) < 1
    assert js_divergence([1, 1, 0], [1, 1]) == pytest.approx(0.0, abs=1e-9)  # shorter histograms are padded


def _summary(count=100, errors=0, latency_ms=1.0, conf=0.95, classes=(50, 50), brightness=120.0, device="d1"):
    ok = count - errors
    return {
        "device_id": device,
        "count": count,
        "errors": errors,
        "latency_ms": histogram([latency_ms] * ok, HISTOGRAMS["latency_ms"]),
        "confidence": histogram([conf] * ok, HISTOGRAMS["confidence"]),
        "predicted_class": [int(c * ok / sum(classes)) for c in classes],
        "brightness": histogram([brightness] * count, HISTOGRAMS["brightness"]),
        "contrast": histogram([30.0] * count, HISTOGRAMS["contrast"]),
    }


def _reference():
    s = _summary(count=1000)
    return {
        "profile": {k: {"counts": s[k]} for k in ("confidence", "brightness", "contrast")}
        | {"predicted_class": {"counts": [500, 500]}}
    }


def test_merge_adds_counts_and_counts_devices():
    m = merge([_summary(device="a"), _summary(errors=10, device="b"), _summary(device="a")])
    assert m["count"] == 300 and m["errors"] == 10 and m["devices"] == 2
    assert int(np.sum(m["latency_ms"])) == 290


def test_percentile_from_a_histogram():
    edges = [0.0, 1.0, 2.0, 3.0]
    assert percentile_from_hist([0, 10, 0], edges, 50) == pytest.approx(1.5)
    assert percentile_from_hist([0, 0, 0], edges, 50) is None


def test_a_window_with_too_few_inferences_is_not_judged():
    v = judge(window_figures(merge([_summary(count=49)]), _reference()), None, RULES)
    assert v["healthy"] is None and "49 inferences < 50" in v["why"]


def test_a_healthy_window():
    fig = window_figures(merge([_summary()]), _reference())
    assert fig["drift"]["psi_brightness"] == pytest.approx(0.0, abs=1e-6)
    assert judge(fig, None, RULES) == {"healthy": True, "violations": []}


def test_each_rule_fails_a_window_with_its_reason():
    ref = _reference()
    errors = judge(window_figures(merge([_summary(errors=5)]), ref), None, RULES)
    assert not errors["healthy"] and errors["violations"][0].startswith("error rate 0.050 > 0.02")
    prev = window_figures(merge([_summary(latency_ms=1.0)]), ref)
    slow = judge(window_figures(merge([_summary(latency_ms=1.5)]), ref), prev, RULES)
    assert not slow["healthy"] and "x the previous release's" in slow["violations"][0]
    dark = judge(window_figures(merge([_summary(brightness=40.0)]), ref), None, RULES)
    assert not dark["healthy"] and any(v.startswith("psi_brightness") for v in dark["violations"])
    mix = judge(window_figures(merge([_summary(classes=(95, 5))]), ref), None, RULES)
    assert any(v.startswith("js_class") for v in mix["violations"])


def _verdicts(healthy: list[bool | None], target="cpu"):
    out = []
    for i, h in enumerate(healthy):
        fig = {"count": 100, "errors": 0, "error_rate": 0.0, "p95_ms": 1.0, "devices": 10, "drift": {}}
        out.append((float(i), target, fig, {"healthy": h, "violations": [] if h else ["error rate 0.1 > 0.02"]}))
    return out


STAGE = {"percent": 10, "min_duration_minutes": 5, "min_devices_reporting": 5}


def test_consecutive_unhealthy_windows_roll_back_with_evidence():
    d = decide(_verdicts([True, False, False]), RULES, STAGE, 1, elapsed_min=10)
    assert d["action"] == "rollback" and d["reason"] == "2 consecutive unhealthy windows in stage 1"
    assert [w["window_start"] for w in d["evidence"]["windows"]] == [1.0, 2.0]


def test_one_unhealthy_window_is_not_enough_and_blocks_advancing():
    assert decide(_verdicts([True, True, False]), RULES, STAGE, 1, elapsed_min=10) is None


def test_a_healthy_stage_advances_only_after_its_minimum_duration_with_enough_devices():
    assert decide(_verdicts([True, True]), RULES, STAGE, 1, elapsed_min=4.9) is None
    assert decide(_verdicts([True, True]), RULES, STAGE, 1, elapsed_min=5)["action"] == "advance"
    assert decide(_verdicts([True, True]), RULES, STAGE | {"min_devices_reporting": 11}, 1, elapsed_min=5) is None
    assert (
        decide(_verdicts([True, None]), RULES, STAGE, 1, elapsed_min=5)["action"] == "advance"
    )  # unjudged windows do not count


def test_rules_can_turn_automation_off():
    off = RULES | {"auto_rollback": False, "auto_advance": False}
    assert decide(_verdicts([False, False]), off, STAGE, 1, elapsed_min=10) is None
    assert decide(_verdicts([True, True]), off, STAGE, 1, elapsed_min=10) is None
