"""A LiteRT model whose graph holds its batch of 1 (a channel shuffle's reshape) still builds and validates:
the runner runs it one image at a time, and the manifest names the ops that pin the batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import build_args, invoke, write_train_config


def _shuffle_cnn(num_classes: int):
    """ShuffleNet's channel shuffle in a tiny CNN: ``view(b, 2, c // 2, h, w)`` exported at batch 1 becomes a
    RESHAPE whose target shape is the constant [1, 2, c // 2, h, w]."""
    from torch import nn
    from torch.nn import functional as F

    class ShuffleCnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, 2, 1)
            self.c2 = nn.Conv2d(16, 16, 3, 2, 1, groups=2)
            self.head = nn.Linear(16, num_classes)

        def forward(self, x):
            x = F.relu(self.c2(F.relu(self.c1(x))))
            b, c, h, w = x.shape
            x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
            return self.head(x.mean((2, 3)))

    return ShuffleCnn()


@pytest.mark.slow
def test_a_model_that_pins_its_batch_builds_for_litert_and_says_why(tmp_path, keypair, loose_targets):
    from factory.data.synth import synthesize
    from factory.device.runtimes.litert_runtime import LiteRtRuntime
    from factory.train import models

    synthesize(tmp_path / "data", seed=3, per_class=12, size=(64, 48))
    models._LOCAL["shuffle-cnn"] = _shuffle_cnn
    try:
        cfg = write_train_config(
            tmp_path / "t.yaml",
            tmp_path / "data" / "dataset.json",
            tmp_path / "model",
            model__architecture="shuffle-cnn",
            train__epochs=1,
            tracking__log_model=False,
        )
        assert invoke("train", "--config", str(cfg)).exit_code == 0
        result = invoke(
            *build_args(
                tmp_path / "model",
                "tflite",
                keypair,
                loose_targets,
                tmp_path / "b",
                "--data",
                str(tmp_path / "data"),
                "--no-track",
            )
        )
    finally:
        models._LOCAL.pop("shuffle-cnn", None)
    assert result.exit_code == 0, result.output
    manifest_path = next((tmp_path / "b").rglob("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    compiled = manifest["artifact"]["compile"]
    assert compiled["batch_resizable"] is False and "RESHAPE ops" in compiled["why_not_resizable"]
    assert manifest["validation"]["parity"]["top1_agreement"] == 1.0  # validated on the whole split, image by image

    runner = LiteRtRuntime().load_file(manifest_path.parent / "model.tflite", {})
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    together = runner(x)
    assert runner.fixed_batch == 1  # the resize failed, so it fell back to the exported batch
    one_by_one = np.concatenate([runner(x[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(together, one_by_one)
