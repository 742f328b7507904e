"""The monitor's pure rules, unit by unit: PSI and JS drift, one window's verdict, a stage's decision."""

import math

import numpy as np
import pytest

from factory.monitor.drift import js_divergence, psi
from factory.monitor.health import decide, judge, window_figures
from factory.monitor.rules import chi2_critical, share_test, smoothed_psi
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


def _judge(summaries, prev=None, ref=None):
    devices = {s["device_id"]: s for s in summaries}
    return judge(devices, ref or _reference(), prev, RULES)


def test_a_window_with_too_few_inferences_is_not_judged():
    v = _judge([_summary(count=49)])[1]
    assert v["healthy"] is None and "49 inferences < 50" in v["why"]


def test_a_healthy_window():
    fig, v = _judge([_summary()])
    assert fig["drift"]["psi_brightness"] == pytest.approx(0.0, abs=1e-6)
    assert v == {"healthy": True, "violations": []}


def test_each_rule_fails_a_window_with_its_reason():
    ref = _reference()
    errors = _judge([_summary(errors=10)])[1]
    assert not errors["healthy"] and errors["violations"][0].startswith("error rate 0.100 > 0.02 (at least 0.0")
    prev = window_figures(merge([_summary(count=1000, latency_ms=1.0)]), ref)
    slow = _judge([_summary(latency_ms=1.5)], prev)[1]
    assert not slow["healthy"] and "x the previous release's" in slow["violations"][0]
    dark = _judge([_summary(brightness=40.0)])[1]
    assert not dark["healthy"] and any(v.startswith("psi_brightness") and "chi-square" in v for v in dark["violations"])
    mix = _judge([_summary(classes=(95, 5))])[1]
    assert any(v.startswith("js_class") for v in mix["violations"])


def test_error_rule_at_its_boundary_needs_confidence():
    """2 errors in 60 (3.3%, a release at a true 1% can do that) is not enough; 8 in 60 is."""
    assert _judge([_summary(count=60, errors=2)])[1]["healthy"]
    assert not _judge([_summary(count=60, errors=8)])[1]["healthy"]
    # 2% exactly, with a million inferences: the lower bound is under the limit, healthy
    assert _judge([_summary(count=10**6, errors=2 * 10**4)])[1]["healthy"]
    assert not _judge([_summary(count=10**6, errors=21_000)])[1]["healthy"]


def test_errors_are_judged_with_the_device_as_the_unit():
    """6% errors spread over ten devices fail a window; the same errors on three of them do not (the
    design effect over devices leaves about 60 independent observations, not 1,000)."""
    spread = [_summary(errors=6, device=f"d{i}") for i in range(10)]
    assert not _judge(spread)[1]["healthy"]
    clustered = [_summary(errors=20 if i < 3 else 0, device=f"d{i}") for i in range(10)]
    assert _judge(clustered)[1]["healthy"]


def _latency_summary(values, device="d1"):
    s = _summary(count=len(values), device=device)
    s["latency_ms"] = histogram(values, HISTOGRAMS["latency_ms"])
    return s


def test_latency_rule_at_its_boundary():
    rng = np.random.default_rng(0)
    ref = _reference()
    prev = window_figures(merge([_latency_summary(np.exp(rng.normal(0, 0.1, 2000)))]), ref)
    # 60 inferences of the same release: the p95 of so few reads anything from 0.9x to 1.3x, never fails
    for _ in range(50):
        assert _judge([_latency_summary(np.exp(rng.normal(0, 0.1, 60)))], prev)[1]["healthy"]
    # 10% slower is within the 1.2x limit however many inferences there are
    assert _judge([_latency_summary(1.1 * np.exp(rng.normal(0, 0.1, 20_000)))], prev)[1]["healthy"]
    # 30% slower: 200 inferences are enough
    fig, v = _judge([_latency_summary(1.3 * np.exp(rng.normal(0, 0.1, 200)))], prev)
    assert not v["healthy"] and fig["latency_p95_ratio"] == pytest.approx(1.3, abs=0.1)


def test_drift_of_small_windows_is_not_noise():
    """Windows of 60 drawn from the reference itself: PSI alone reads above 0.25 in about a fifth of them
    (the old rule, for this one signal), the rule with its chi-square test fails none."""
    rng = np.random.default_rng(1)
    edges = np.asarray(HISTOGRAMS["brightness"])
    ref_values = rng.uniform(60, 200, 476)
    ref = _reference()
    ref["profile"]["brightness"] = {"counts": histogram(ref_values, edges)}
    old = flagged = 0
    for _ in range(100):
        s = _summary(count=60)
        s["brightness"] = histogram(rng.choice(ref_values, 60), edges)
        old += psi(ref["profile"]["brightness"]["counts"], s["brightness"]) > 0.25
        flagged += _judge([s], ref=ref)[1]["healthy"] is False
    assert old > 10 and flagged == 0
    # a real shift (the same scene at 35% brightness) is found in a window of 60
    s = _summary(count=60)
    s["brightness"] = histogram(0.35 * rng.choice(ref_values, 60), edges)
    assert not _judge([s], ref=ref)[1]["healthy"]


def test_one_inference_in_an_empty_reference_bucket_does_not_fail_a_window():
    """6 of 10 reference confidence buckets empty (468 images); one of 60 inferences lands in one."""
    ref = _reference()
    ref["profile"]["confidence"] = {"counts": [0, 0, 0, 0, 0, 0, 10, 40, 118, 300]}
    s = _summary(count=60)
    s["confidence"] = [1, 0, 0, 0, 0, 0, 1, 5, 15, 38]
    assert smoothed_psi(ref["profile"]["confidence"]["counts"], s["confidence"]) < psi(
        ref["profile"]["confidence"]["counts"], s["confidence"]
    )  # half a count in every used bucket, not a 1e-4 floor
    fig, v = _judge([s], ref=ref)
    assert v["healthy"], v


def _verdicts(healthy: list[bool | None], target="cpu"):
    out = []
    for i, h in enumerate(healthy):
        fig = {"count": 100, "errors": 0, "error_rate": 0.0, "p95_ms": 1.0, "devices": 10, "drift": {}}
        out.append((float(i), target, fig, {"healthy": h, "violations": [] if h else ["error rate 0.1 > 0.02"]}))
    return out


STAGE = {"percent": 10, "min_duration_minutes": 5, "min_devices_reporting": 5}


def test_consecutive_unhealthy_windows_roll_back_with_evidence():
    d = decide(_verdicts([True, False, False]), RULES, STAGE, 1, elapsed_min=10)
    assert d["action"] == "rollback" and d["reason"] == "2 consecutive unhealthy windows in stage 1 (cpu)"
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


def test_one_failing_target_rolls_back_a_multi_target_rollout_in_any_order():
    """cpu at 10% errors in every window, tflite healthy: rolled back whichever order targets come in."""
    cpu, tflite = _verdicts([False] * 5, "cpu"), _verdicts([True] * 5, "tflite")
    for verdicts in (cpu + tflite, tflite + cpu, [v for pair in zip(cpu, tflite, strict=True) for v in pair]):
        d = decide(verdicts, RULES, STAGE, 1, elapsed_min=10, targets=["cpu", "tflite"])
        assert d["action"] == "rollback" and "(cpu)" in d["reason"]
        assert {w["target"] for w in d["evidence"]["windows"]} == {"cpu"}


def test_a_stage_advances_only_when_every_target_is_healthy():
    cpu, tflite = _verdicts([True, True], "cpu"), _verdicts([True, None], "tflite")
    assert decide(cpu + tflite, RULES, STAGE, 1, elapsed_min=10, targets=["cpu", "tflite"])["action"] == "advance"
    silent = decide(cpu, RULES, STAGE, 1, elapsed_min=10, targets=["cpu", "tflite"])
    assert silent is None  # tflite has not been judged once: nothing says it is healthy
    unjudged = _verdicts([None, None], "tflite")  # tflite reported, but too little to judge: the stage waits
    assert decide(cpu + unjudged, RULES, STAGE, 1, elapsed_min=10) is None
    one_bad = _verdicts([True, False], "tflite")
    assert decide(cpu + one_bad, RULES, STAGE, 1, elapsed_min=10, targets=["cpu", "tflite"]) is None


def test_statistics_helpers():
    assert chi2_critical(1, 0.001) == pytest.approx(10.83, rel=0.04)
    assert chi2_critical(15, 0.001) == pytest.approx(37.70, rel=0.01)
    t = share_test([1], [100], 0.02, 0.001)
    assert t["share"] == 0.01 and t["lower"] < 0.01 and not t["exceeds"]


def test_a_verdict_that_rests_on_one_device_does_not_fail_a_window():
    """Nine honest devices and one that reports dark frames: without it the window is healthy, so it is."""
    from factory.monitor.health import judge_window

    devices = {f"d{i}": _summary(count=60, device=f"d{i}") for i in range(9)}
    devices["forger"] = _summary(count=120, brightness=20.0, device="forger")
    fig, v = judge_window(devices, _reference(), None, RULES)
    assert v["healthy"] and v["single_device"]["device_id"] == "forger"
    assert any(x.startswith("psi_brightness") for x in v["single_device"]["violations"])
