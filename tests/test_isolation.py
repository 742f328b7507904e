"""Crash containment: a native crash in one target's conversion fails that target, not the command (issue 27).

The fault is real: ``FACTORY_FAULT=segv@STAGE`` makes the worker read address 0 when STAGE starts, as a
crashing converter would; the worker dies of SIGSEGV and a fresh one builds the next target.
"""

from __future__ import annotations

import json

from tests.conftest import build_args, invoke, quick_search


def test_the_default_executor_is_a_worker_process(monkeypatch):
    from factory.pipeline.executor import get_executor

    monkeypatch.delenv("FACTORY_EXECUTOR", raising=False)
    monkeypatch.delenv("FACTORY_RAY_ADDRESS", raising=False)
    pool = get_executor(None)
    try:
        assert pool.name == "process"
    finally:
        pool.close()


def test_a_segfault_in_one_target_fails_that_target_and_the_others_are_built(
    tmp_path, trained, keypair, loose_targets, monkeypatch
):
    monkeypatch.setenv("FACTORY_FAULT", "segv@litert-export")
    out = tmp_path / "bundles"
    args = build_args(
        trained.path,
        "cpu",
        keypair,
        loose_targets,
        out,
        "--target",
        "tflite",
        "--target",
        "openvino",
        "--no-track",
        "--executor",
        "process",
        "--report-dir",
        str(tmp_path / "reports"),
    )
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "FAILED at litert-export: the worker process died of SIGSEGV in stage litert-export" in result.output
    built = sorted(p.parent.name for p in out.glob("*/*/*/manifest.json"))
    assert built == ["cpu", "openvino"]
    failure = json.loads((tmp_path / "reports" / "tflite.json").read_text())
    assert failure["stage"] == "litert-export" and "native crash" in failure["hint"]
    assert not list(out.glob("*/*/tflite*"))  # nothing half-written of the crashed target
    assert not [p for p in (tmp_path / "cache" / "staging").glob("*")]  # its staging folder is gone too


def test_an_ordinary_failure_in_the_worker_is_a_failed_row_and_bad_input_stops_the_command(
    tmp_path, trained, keypair, loose_targets
):
    out = tmp_path / "bundles"
    args = build_args(
        trained.path,
        "cpu",
        keypair,
        loose_targets,
        out,
        "--no-track",
        "--executor",
        "process",
        "--set",
        "recipe.pruning.method=structured",
        "--set",
        "recipe.pruning.ratio=0.5",
        "--data",
        str(tmp_path / "missing"),
    )
    result = invoke(*args)
    assert result.exit_code == 2 and "missing" in result.output  # the dataset is checked before any worker
    assert not out.exists()


def test_a_search_candidate_that_crashes_is_a_failed_candidate(tmp_path, trained, keypair, loose_targets, monkeypatch):
    monkeypatch.setenv("FACTORY_FAULT", "segv@onnxruntime-quantize")
    result, summary = quick_search(trained.path, keypair, loose_targets, tmp_path, "--executor", "process")
    assert result.exit_code == 0, result.output
    by = {c["label"]: c for c in summary["candidates"]}
    crashed = [c for label, c in by.items() if "int8" in label]
    assert crashed and all(c["status"] == "failed" and "SIGSEGV" in c["reason"] for c in crashed), by
    assert any(c["winner"] for c in by.values() if "fp32" in c["label"])
