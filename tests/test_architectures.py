"""Builds for several torchvision architectures on small inputs, one bundle per runtime each."""

import json

import pytest

from tests.conftest import TARGET_OF, build_args, invoke, write_train_config

ARCHS = ["mobilenet_v3_small", "resnet18", "efficientnet_b0"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_builds_for_every_runtime(tmp_path, synth_ds, keypair, loose_targets, arch):
    cfg = write_train_config(
        tmp_path / "t.yaml",
        synth_ds / "dataset.json",
        tmp_path / "model",
        model__architecture=arch,
        train__epochs=1,
        tracking__log_model=False,
    )
    trained = invoke("train", "--config", str(cfg))
    assert trained.exit_code == 0, trained.output
    # every registered runtime; LiteRT at fp32 (its int8 paths are walked in test_export.py)
    for target in sorted(TARGET_OF.values()):
        precision = "fp32" if target == "tflite" else "int8-static"
        result = invoke(
            *build_args(
                tmp_path / "model",
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
        assert result.exit_code == 0, f"{arch} {target}: {result.output}"
        m = json.loads(next((tmp_path / "bundles").glob(f"*/*/{target}/manifest.json")).read_text())
        assert m["lineage"]["canonical"]["architecture"] == arch
        assert m["validation"]["parity"]["cosine_mean"] > 0.9
