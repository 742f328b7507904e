"""A test split too small to resolve the accuracy margin still gets its bundles, with an honest verdict (issue 32).

The session's tiny dataset has 23 test images: no build can show a 1.0 pt margin on them. The build says so
before it starts, builds and signs anyway, and ``budgets.on_inconclusive`` decides what the inconclusive
verdict means (default: exact fp32 passes, int8 and pruning fail).
"""

from __future__ import annotations

import json

import pytest

from factory.bench.budgets import Check, judge
from tests.conftest import ROOT, build_args, invoke, quick_search


def _build(tmp_path, trained, keypair, target, *extra):
    result = invoke(*build_args(trained.path, target, keypair, ROOT / "targets", tmp_path / "b", "--no-track", *extra))
    folders = list((tmp_path / "b").glob(f"*/*/{target}"))
    manifest = json.loads((folders[0] / "manifest.json").read_text()) if folders else None
    return result, manifest


def test_fp32_is_built_signed_and_passes_as_exact_with_the_verdict_recorded(tmp_path, trained, keypair):
    result, m = _build(tmp_path, trained, keypair, "cpu")
    assert result.exit_code == 0, result.output
    assert "23 test images cannot resolve a 1 pt accuracy margin" in result.output
    assert "budgets.on_inconclusive" in result.output and "max_accuracy_drop_pt" in result.output  # the ways out
    v = m["validation"]
    assert v["passed"] is True
    assert v["inconclusive"]["rule"] == "pass-if-exact" and "accuracy_drop" in v["inconclusive"]["inconclusive"]
    assert next(c for c in v["checks"] if c["check"] == "accuracy_drop")["verdict"] == "inconclusive"
    assert next(c for c in v["checks"] if c["check"] == "max_abs_diff")["passed"]
    assert "on_inconclusive=pass-if-exact" in result.output  # the table's verdict column says it
    assert (tmp_path / "b" / m["name"] / m["version"] / "cpu.tar.gz").is_file()


@pytest.mark.slow
def test_int8_fails_by_default_and_passes_when_the_profile_says_warn(tmp_path, trained, keypair):
    result, m = _build(tmp_path / "strict", trained, keypair, "cpu", "--precision", "int8-static")
    assert result.exit_code == 1, result.output
    assert m["validation"]["passed"] is False and m["validation"]["inconclusive"]["rule"] == "fail"
    assert "FAIL" in result.output  # written and signed, marked failing
    result, m = _build(
        tmp_path / "warn",
        trained,
        keypair,
        "cpu",
        "--precision",
        "int8-static",
        "--set",
        "budgets.on_inconclusive=warn",
    )
    assert result.exit_code == 0, result.output
    assert m["validation"]["passed"] is True and m["validation"]["inconclusive"]["rule"] == "warn"


def test_the_profile_can_make_fp32_strict(tmp_path, trained, keypair):
    result, m = _build(tmp_path, trained, keypair, "cpu", "--set", "budgets.on_inconclusive=fail")
    assert result.exit_code == 1 and m["validation"]["passed"] is False


def test_a_bad_rule_is_a_config_error(tmp_path, trained, keypair):
    result, m = _build(tmp_path, trained, keypair, "cpu", "--set", "budgets.on_inconclusive=maybe")
    assert result.exit_code == 2 and "on_inconclusive" in result.output and m is None


def _check(name: str, verdict: str) -> Check:
    return Check(name, 0.0, 1.0, verdict, "<=")


@pytest.mark.parametrize(
    "rule,exact,strict,passed",
    [
        ("auto", True, False, True),
        ("auto", False, False, False),
        ("auto", True, True, False),
        ("warn", False, True, True),
        ("fail", True, False, False),
        ("pass-if-exact", True, True, True),
        ("pass-if-exact", False, False, False),
    ],
)
def test_judge_follows_the_rule(rule, exact, strict, passed):
    checks = [_check("accuracy_drop", "inconclusive"), _check("size", "pass")]
    assert judge(checks, rule, exact=exact, strict=strict)["passed"] is passed
    # a failed check fails whatever the rule; with nothing inconclusive the rule does not matter
    assert judge([*checks, _check("latency_p95", "fail")], "warn", exact=True, strict=False)["passed"] is False
    assert judge([_check("size", "pass")], "fail", exact=False, strict=True) == {
        "passed": True,
        "rule": "fail",
        "inconclusive": [],
        "why": None,
    }


@pytest.mark.slow
def test_the_search_follows_the_same_rule(tmp_path, trained, keypair):
    """fp32 candidates are feasible as exact; int8 ones stay inconclusive and cannot win."""
    result, summary = quick_search(trained.path, keypair, ROOT / "targets", tmp_path)
    assert result.exit_code == 0, result.output
    status = {c["label"]: c["status"] for c in summary["candidates"]}
    assert any(s == "feasible" for lbl, s in status.items() if "fp32" in lbl), status
    assert all(s != "feasible" for lbl, s in status.items() if "int8" in lbl), status
    # a classifier's report shows a classifier's budgets only (issue 29)
    assert "max_accuracy_drop_pt" in summary["budgets"] and "on_inconclusive" in summary["budgets"]
    assert not {"max_map_drop_pt", "max_corner_error_increase_pct"} & set(summary["budgets"])


def test_reports_show_the_budgets_of_the_models_task():
    from factory.bench.budgets import budgets_for
    from factory.export.targets import load_target

    budgets = load_target("cpu")["budgets"]
    det = budgets_for(budgets, "detection")
    assert "max_map_drop_pt" in det and not {"max_accuracy_drop_pt", "min_top1_agreement"} & set(det)
    loc = budgets_for(budgets, "document-localisation")
    assert "max_corner_error_increase_pct" in loc and "max_map_drop_pt" not in loc
    assert budgets_for(budgets, "classification")["max_latency_ms"] == budgets["max_latency_ms"]
