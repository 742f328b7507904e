"""The export layer, walked through the backend registry: every backend, every precision it declares."""

import json

import numpy as np
import pytest
import yaml

from factory.bundle.archive import verify_bundle
from factory.bundle.signing import load_public_key
from factory.device.loader import open_bundle
from factory.export.base import backend_names, get_backend
from tests.conftest import TARGET_OF, build_args, invoke

CASES = [(b, p) for b in sorted(TARGET_OF) for p in get_backend(b).capabilities.precisions]


def test_every_registered_backend_has_a_target_profile():
    assert sorted(backend_names()) == sorted(TARGET_OF)


def test_discovery_finds_every_backend_and_runtime_after_one_was_imported_by_hand():
    """Registries discover their modules once, whatever was imported first (it used to stop at one)."""
    import subprocess
    import sys

    code = (
        "import factory.export.litert_backend, factory.device.runtimes.litert_runtime\n"
        "from factory.export.base import backend_names\nfrom factory.device.runtimes import runtime_names\n"
        "print(backend_names(), runtime_names())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = sorted(TARGET_OF)
    assert out.stdout.strip() == f"{names} {names}"


@pytest.mark.parametrize("backend,precision", CASES, ids=[f"{b}-{p}" for b, p in CASES])
def test_build_every_backend_and_precision(tmp_path, trained, synth_ds, keypair, loose_targets, backend, precision):
    target = TARGET_OF[backend]
    result = invoke(
        *build_args(
            trained.path,
            target,
            keypair,
            loose_targets,
            tmp_path / "bundles",
            "--precision",
            precision,
            "--data",
            str(synth_ds),
            "--no-track",
        )
    )
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "bundles").glob(f"*/*/{target}"))
    assert (folder.parent / f"{target}.tar.gz").is_file()
    checked = verify_bundle(folder, load_public_key(keypair[1]))
    m = checked["manifest"]
    assert m.runtime["backend"] == backend and m.recipe["precision"] == precision
    assert m.labels == trained.labels and m.preprocessing == trained.preprocessing
    assert m.lineage["canonical"]["weights_sha256"] == trained.card["files"]["weights"]["sha256"]
    parity = m.validation["parity"]
    assert parity["n"] == trained.card["metrics"]["test"]["n"]
    assert m.latency["p50_ms"] > 0 and m.latency["host"]["cpu"]
    if precision == "fp32":
        assert parity["top1_agreement"] >= 0.995 and abs(parity["accuracy_drop_pt"]) <= 0.2
        assert parity["max_abs_diff"] <= 1e-3
    elif precision.startswith("int8"):
        assert parity["cosine_mean"] > 0.9
        if precision == "int8-static":
            assert m.recipe["quantization_applied"]["calibration"]["n"] == 16
            assert len(m.recipe["quantization_applied"]["calibration"]["tensor_sha256"]) == 64
    manifest, runner = open_bundle(folder)
    batch = np.random.default_rng(0).normal(size=(3, *m.input["shape"][1:])).astype(np.float32)
    assert runner(batch).shape == (3, len(trained.labels))


def test_unknown_target_lists_the_valid_ones(tmp_path, trained, keypair, loose_targets):
    result = invoke(*build_args(trained.path, "jetson", keypair, loose_targets, tmp_path / "b"))
    assert result.exit_code == 2
    assert "unknown target 'jetson'" in result.stderr and ", ".join(sorted(TARGET_OF.values())) in result.stderr


def test_profile_with_unknown_precision(tmp_path, trained, keypair, loose_targets):
    bad = tmp_path / "targets"
    bad.mkdir()
    profile = yaml.safe_load((loose_targets / "openvino.yaml").read_text())
    profile["recipe"]["precision"] = "int4-magic"
    (bad / "edge.yaml").write_text(yaml.safe_dump(profile))
    result = invoke(*build_args(trained.path, "edge", keypair, bad, tmp_path / "b"))
    assert result.exit_code == 2
    assert "precision 'int4-magic'" in result.stderr and "int8-static" in result.stderr
    assert not (tmp_path / "b").exists()


def test_precision_the_backend_lacks(tmp_path, trained, keypair, loose_targets):
    result = invoke(
        *build_args(trained.path, "openvino", keypair, loose_targets, tmp_path / "b", "--precision", "int8-dynamic")
    )
    assert result.exit_code == 2
    assert "not supported by backend 'openvino'" in result.stderr


def test_missing_canonical_model(tmp_path, keypair, loose_targets):
    result = invoke(*build_args(tmp_path / "nowhere", "cpu", keypair, loose_targets, tmp_path / "b"))
    assert result.exit_code == 2
    assert "not a canonical model directory" in result.stderr
    assert not (tmp_path / "b").exists()


def test_corrupt_canonical_model_leaves_no_bundle(tmp_path, trained, keypair, loose_targets):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained.path, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[100] ^= 0x55
    (copy / "model.onnx").write_bytes(bytes(data))
    result = invoke(*build_args(copy, "cpu", keypair, loose_targets, tmp_path / "b"))
    assert result.exit_code == 2
    assert "sha256 does not match" in result.stderr
    assert not (tmp_path / "b").exists()


def test_budget_failure_writes_the_figures_and_exits_1(tmp_path, trained, synth_ds, keypair, loose_targets):
    result = invoke(
        *build_args(
            trained.path,
            "cpu",
            keypair,
            loose_targets,
            tmp_path / "b",
            "--data",
            str(synth_ds),
            "--set",
            "budgets.max_size_mb=0.000001",
            "--no-track",
        )
    )
    assert result.exit_code == 1
    assert "budget checks failed for cpu" in result.stderr
    m = json.loads(next((tmp_path / "b").glob("*/*/cpu/manifest.json")).read_text())
    assert m["validation"]["passed"] is False
    size = [c for c in m["validation"]["checks"] if c["check"] == "size"][0]
    assert size["passed"] is False and size["value"] > 0


def test_structured_pruning_cuts_macs_and_is_cached(tmp_path, trained, synth_ds, keypair, loose_targets):
    args = build_args(
        trained.path,
        "cpu",
        keypair,
        loose_targets,
        tmp_path / "b",
        "--data",
        str(synth_ds),
        "--prune",
        "structured:0.5",
        "--set",
        "recipe.pruning.finetune_epochs=1",
        "--no-track",
    )
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    m = json.loads(next((tmp_path / "b").glob("*/*/cpu/manifest.json")).read_text())
    applied = m["recipe"]["pruning_applied"]
    assert applied["mac_reduction"] >= 2.0 and applied["cache"] == "miss"
    assert m["artifact"]["macs"] < m["artifact"]["canonical_macs"] / 2
    again = invoke(*args)
    assert again.exit_code == 0
    m2 = json.loads(next((tmp_path / "b").glob("*/*/cpu/manifest.json")).read_text())
    assert m2["recipe"]["pruning_applied"]["cache"] == "hit"


def test_unstructured_pruning_says_it_gives_no_speedup(tmp_path, trained, synth_ds, keypair, loose_targets):
    result = invoke(
        *build_args(
            trained.path,
            "cpu",
            keypair,
            loose_targets,
            tmp_path / "b",
            "--data",
            str(synth_ds),
            "--prune",
            "unstructured:0.5",
            "--set",
            "recipe.pruning.finetune_epochs=0",
            "--no-track",
        )
    )
    assert result.exit_code == 0, result.output
    m = json.loads(next((tmp_path / "b").glob("*/*/cpu/manifest.json")).read_text())
    applied = m["recipe"]["pruning_applied"]
    assert "no speedup" in applied["note"]
    assert applied["weight_sparsity"] >= 0.45
    assert m["artifact"]["size_gzip_bytes"] < m["artifact"]["size_bytes"]


def test_build_is_tracked_and_registered_in_mlflow(tmp_path, trained, synth_ds, keypair, loose_targets):
    import mlflow
    import mlflow.pyfunc

    from factory.device.loader import open_bundle

    result = invoke(*build_args(trained.path, "cpu", keypair, loose_targets, tmp_path / "b", "--data", str(synth_ds)))
    assert result.exit_code == 0, result.output
    name = trained.card["name"]
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "cpu")
    run = mlflow.get_run(version.run_id)
    assert run.data.tags["mlflow.parentRunId"] == trained.card["lineage"]["mlflow"]["run_id"]
    assert run.data.params["precision"] == "fp32"
    model = mlflow.pyfunc.load_model(f"models:/{name}@cpu")
    folder = next((tmp_path / "b").glob("*/*/cpu"))
    _, runner = open_bundle(folder)
    batch = np.zeros((2, *trained.card["input"]["shape"][1:]), np.float32)
    assert np.allclose(model.predict(batch), runner(batch), atol=1e-6)
    answers = model.predict(batch, params={"postprocess": True})  # the task's outputs, as a device gets them
    assert [a["label"] for a in answers] == [trained.labels[i] for i in runner(batch).argmax(1)]


def test_failed_conversion_names_stage_and_operator(tmp_path, synth_ds, keypair, loose_targets, monkeypatch):
    """An architecture whose op LiteRT cannot lower: the error says where and what, nothing is left."""
    import torch
    from torch import nn

    from factory.train import models
    from tests.conftest import write_train_config

    class Odd(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)
            self.head = nn.Linear(8, n)

        def forward(self, x):
            x = torch.logcumsumexp(self.conv(x), dim=3)  # ONNX and ORT are fine; LiteRT has no lowering
            return self.head(x.mean((2, 3)))

    monkeypatch.setitem(models._LOCAL, "odd-cnn", Odd)  # registered for this test only
    cfg = write_train_config(
        tmp_path / "t.yaml",
        synth_ds / "dataset.json",
        tmp_path / "model",
        model__architecture="odd-cnn",
        train__epochs=1,
        tracking__log_model=False,
    )
    assert invoke("train", "--config", str(cfg)).exit_code == 0
    result = invoke(
        *build_args(
            tmp_path / "model", "tflite", keypair, loose_targets, tmp_path / "b", "--data", str(synth_ds), "--no-track"
        )
    )
    assert result.exit_code == 1
    assert "at litert-convert" in result.stderr and "logcumsumexp" in result.stderr
    assert not list((tmp_path / "b").rglob("manifest.json"))  # nothing published (rglob of a missing folder is empty)
    # one failing target among three: the others are built, the table shows all three, the exit code says so
    result = invoke(
        *build_args(
            tmp_path / "model",
            "tflite",
            keypair,
            loose_targets,
            tmp_path / "c",
            "--data",
            str(synth_ds),
            "--no-track",
            "--target",
            "cpu",
            "--target",
            "openvino",
            "--report-dir",
            str(tmp_path / "r"),
        )
    )
    assert result.exit_code == 1 and "tflite could not be built" in result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| tflite", "| cpu", "| openvino"))]
    assert len(rows) == 3 and "FAILED at litert-convert (operator aten.logcumsumexp" in rows[0]
    assert sorted(p.parent.name for p in (tmp_path / "c").rglob("manifest.json")) == ["cpu", "openvino"]
    failure = json.loads((tmp_path / "r" / "tflite.json").read_text())
    assert failure["stage"] == "litert-convert" and failure["passed"] is False
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "b").rglob("*"))


def test_the_packaged_profiles_are_found_outside_the_project(tmp_path, monkeypatch):
    """A command run in any folder finds the default profiles installed with the package (issue 27)."""
    from factory.export.targets import PACKAGED, load_target, targets_dir

    monkeypatch.delenv("FACTORY_TARGETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert targets_dir() == PACKAGED and load_target("tflite")["backend"] == "litert"
    result = invoke("targets")
    assert result.exit_code == 0 and "openvino" in result.output


def test_loop_demo_checks_its_profile_before_training(tmp_path, monkeypatch):
    """It used to train for 87 s and then fail "unknown target 'cpu'"; now it fails before any work."""
    empty = tmp_path / "no-profiles"
    empty.mkdir()
    monkeypatch.setenv("FACTORY_TARGETS", str(empty))
    result = invoke("loop", "demo", "--out", str(tmp_path / "demo"))
    assert result.exit_code == 2 and "unknown target 'cpu'" in result.output
    assert not (tmp_path / "demo").exists()
