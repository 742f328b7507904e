"""int8 accuracy repair: a model that int8 breaks on purpose is brought back within its target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory.export.base import get_backend
from tests.conftest import TARGET_OF, build_args, invoke, write_train_config

INT8_TARGETS = sorted(t for b, t in TARGET_OF.items() if "int8-static" in get_backend(b).capabilities.precisions)


def _spiky(num_classes: int):
    """A small CNN whose float function is ordinary but whose second block's output carries one channel
    2000x hotter than the others (multiplied in, divided back out before the next convolution): one
    per-tensor int8 scale for that tensor rounds every other channel to a few levels."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Spiky(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, 2, 1)
            self.c2 = nn.Conv2d(16, 32, 3, 2, 1)
            self.c3 = nn.Conv2d(32, 48, 3, 2, 1)
            self.head = nn.Linear(48, num_classes)
            gain = torch.ones(1, 32, 1, 1)
            gain[0, 0] = 2000.0
            self.register_buffer("gain", gain)

        def forward(self, x):
            x = F.relu(self.c1(x))
            x = F.relu(self.c2(x) * self.gain)
            x = F.relu(self.c3(x / self.gain))
            return self.head(x.mean((2, 3)))

    return Spiky()


@pytest.fixture(scope="module")
def spiky_model(tmp_path_factory):
    from factory.data.synth import synthesize
    from factory.train import models

    work = tmp_path_factory.mktemp("spiky")
    synthesize(work / "data", seed=5, per_class=40, size=(96, 72))  # ~64 validation and ~64 test images
    models._LOCAL["spiky-cnn"] = _spiky  # registered for this module's tests only
    cfg = write_train_config(
        work / "t.yaml",
        work / "data" / "dataset.json",
        work / "model",
        model__architecture="spiky-cnn",
        train__epochs=3,
        tracking__log_model=False,
    )
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    yield work
    models._LOCAL.pop("spiky-cnn", None)


@pytest.mark.slow
@pytest.mark.parametrize("target", INT8_TARGETS)
def test_repair_brings_a_sensitive_model_back_within_its_margin(spiky_model, target, keypair, loose_targets):
    work = spiky_model
    result = invoke(
        *build_args(
            work / "model",
            target,
            keypair,
            loose_targets,
            work / f"b-{target}",
            "--data",
            str(work / "data"),
            "--no-track",
            "--precision",
            "int8-static",
            "--set",
            "budgets.max_accuracy_drop_pt=20",
            "--set",
            "budgets.min_top1_agreement=0.8",
        )
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(next((work / f"b-{target}").rglob("manifest.json")).read_text())
    applied = manifest["recipe"]["quantization_applied"]
    repair = applied["repair"]
    first = repair["attempts"][0]
    assert first["fix"] == "as configured" and not first["val"]["within_target"]  # int8 broke it
    assert repair["worked"] not in (None, "as configured"), repair  # and the repair fixed it
    assert repair["attempts"][-1]["val"]["within_target"] and repair["chosen"] == repair["worked"]
    assert (repair["target"]["max_drop_upper_pt"], repair["target"]["min_agreement"]) == (20.0, 0.9)
    if repair["worked"].startswith("keep"):  # layers kept in float are named, and ranked by measured sensitivity
        assert applied["keep_float"] and repair["sensitivity"][0]["error"] > 0
    assert set(repair["latency_ms"]) == {"fp32_export", "int8_as_configured", "int8_repaired"}
    assert manifest["validation"]["passed"]  # the test split confirms it within the budgets


def test_judge_projects_the_validation_rates_onto_the_test_split_and_wants_the_upper_end_in_the_margin():
    from factory.export.repair import ValidationSet, judge

    y = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0])
    reference = np.eye(2)[y].astype(np.float32)  # the canonical model is right on every image
    logits = reference.copy()
    logits[:2] = logits[:2, ::-1]  # two images flipped: lost
    val = ValidationSet(np.zeros((10, 1)), y, reference)
    v = judge(logits, val, {"max_accuracy_drop_pt": 55.0})
    assert (v["lost"], v["gained"], v["drop_pt"], v["agreement"]) == (2, 0, 20.0, 0.8)
    assert v["projected_to"] == 10 and 50 < v["projected_interval_pt"][1] < 55 and v["within_target"]
    # the point estimate (20 pt) is within a 30 pt margin, but 10 images cannot show it
    assert not judge(logits, val, {"max_accuracy_drop_pt": 30.0})["within_target"]
    # the same rates on a test split of 100 images would: the interval narrows to about [13, 29] pt
    wide = judge(logits, ValidationSet(val.x, y, reference, n_test=100), {"max_accuracy_drop_pt": 30.0})
    assert wide["projected_to"] == 100 and wide["projected_interval_pt"][1] < 30 and wide["within_target"]
    # agreement: 0.8 misses half of a 0.9 floor's allowance (at most 5% may disagree)
    assert not judge(logits, val, {"min_top1_agreement": 0.9})["within_target"]


def test_a_quantizer_that_cannot_make_the_model_gives_way_to_a_cheaper_fix_that_can(tmp_path):
    """ai-edge-quantizer writes ConvNeXt a model LiteRT refuses; the repair goes on to the other quantizer.
    (Stand-in quantizers: this checks the repair's order and record, not a runtime.)"""
    from factory.errors import ExportError
    from factory.export.repair import ValidationSet, repair_quantization

    y = np.arange(40) % 4
    reference = np.eye(4, dtype=np.float32)[y] * 5
    val = ValidationSet(np.arange(40, dtype=np.float32)[:, None], y, reference)

    def quantize(opts, folder):
        if opts.get("engine") != "pt2e":
            raise ExportError("litert-quantize", "invalid quantization parameters", operator="FULLY_CONNECTED")
        path = folder / "m"
        path.write_text("ok")
        return path, {"method": opts["engine"]}

    def load(path):
        return lambda x: reference[x[:, 0].astype(int)]  # the canonical model's answers: a perfect int8

    path, facts = repair_quantization(
        quantize, load, fp32=tmp_path / "fp32", options={"engine": "auto"}, work=tmp_path, val=val,
        budgets={"max_accuracy_drop_pt": 20.0}, cheap_fixes=[("PT2E", {"engine": "pt2e"})], layers=lambda: [],
    )  # fmt: skip
    repair = facts["repair"]
    assert [a["fix"] for a in repair["attempts"]] == ["as configured", "PT2E"]
    assert "FULLY_CONNECTED" in repair["attempts"][0]["error"] and repair["worked"] == "PT2E"
    assert facts["method"] == "pt2e" and path.read_text() == "ok"
    with pytest.raises(ExportError, match="invalid quantization parameters"):  # nothing works: the first failure
        repair_quantization(
            quantize, load, fp32=tmp_path / "fp32", options={"engine": "auto"}, work=tmp_path / "2", val=val,
            budgets={"max_accuracy_drop_pt": 20.0}, cheap_fixes=[], layers=lambda: [],
        )  # fmt: skip
