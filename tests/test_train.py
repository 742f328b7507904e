import shutil

import numpy as np
import onnx
import pytest
import torch

from factory.data.manifest import load_manifest
from factory.errors import ModelError
from factory.preprocess import preprocess
from factory.train.canonical import load_canonical, onnx_logits
from factory.train.models import create_model
from tests.conftest import invoke, write_train_config


def _test_batch(model, synth_ds, n=64):
    import cv2

    m = load_manifest(synth_ds)
    recs = m.subset("test")[:n]
    return preprocess([cv2.imread(str(m.resolve(r))) for r in recs], model.preprocessing)


def test_canonical_model_card_is_complete(trained, synth_ds):
    card = trained.card
    for key in ("architecture", "input", "preprocessing", "labels", "metrics", "lineage", "reference_profile", "files"):
        assert key in card
    m = load_manifest(synth_ds)
    assert card["labels"] == m.classes
    assert card["lineage"]["dataset_hash"] == m.dataset_hash
    assert card["lineage"]["seed"] == 0
    assert len(card["lineage"]["config_hash"]) == 64
    assert card["metrics"]["test"]["n"] == len(m.subset("test"))
    assert set(card["metrics"]["test"]["per_class"]) == set(m.classes)
    ref = card["reference_profile"]
    assert sum(ref["predicted_class"]["counts"]) == len(m.subset("val"))
    assert sum(ref["confidence"]["counts"]) == len(m.subset("val"))
    assert sum(ref["brightness"]["counts"]) == len(m.subset("val"))
    assert (trained.path / "confusion_matrix.png").stat().st_size > 1000


def test_onnx_matches_pytorch_with_dynamic_batch(trained, synth_ds):
    proto = onnx.load(str(trained.onnx))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert not list(trained.path.glob("*.data")), "ONNX must be a single file"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    batch = _test_batch(trained, synth_ds)
    with torch.no_grad():
        ref = trained.build_module()(torch.from_numpy(batch)).numpy()
    assert np.abs(onnx_logits(trained.onnx, batch) - ref).max() <= 1e-4
    assert onnx_logits(trained.onnx, batch[:1]).shape == (1, len(trained.labels))
    assert onnx_logits(trained.onnx, batch[:5]).shape == (5, len(trained.labels))


def test_same_seed_same_predictions(tmp_path, trained, synth_ds):
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "again")
    assert invoke("train", "--config", str(cfg)).exit_code == 0
    again = load_canonical(tmp_path / "again")
    batch = _test_batch(trained, synth_ds)
    assert np.array_equal(onnx_logits(trained.onnx, batch).argmax(1), onnx_logits(again.onnx, batch).argmax(1))
    assert again.card["metrics"]["test"] == trained.card["metrics"]["test"]


def test_mlflow_run_and_model_load_and_predict(trained, synth_ds):
    import mlflow
    import mlflow.pyfunc

    run_id = trained.card["lineage"]["mlflow"]["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.tags["factory.dataset_hash"] == trained.card["lineage"]["dataset_hash"]
    assert run.data.params["model.architecture"] == "tiny-cnn"
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_top1")
    assert [h.step for h in history] == [1, 2]
    model = mlflow.pyfunc.load_model(trained.card["lineage"]["mlflow"]["model_uri"])
    batch = _test_batch(trained, synth_ds, n=3)
    for inputs in (batch, {"input": batch}):
        logits = np.asarray(model.predict(inputs)["logits"])
        assert logits.shape == (3, len(trained.labels))
        assert np.abs(logits - onnx_logits(trained.onnx, batch)).max() < 1e-5


def test_unknown_architecture_lists_valid_ones(tmp_path, synth_ds):
    cfg = write_train_config(
        tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "out", model__architecture="mobilenet_v9"
    )
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 2
    assert "unknown architecture 'mobilenet_v9'" in result.stderr
    assert "mobilenet_v3_small" in result.stderr and "tiny-cnn" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_config_key_is_named(tmp_path, synth_ds):
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "out")
    text = cfg.read_text().replace("epochs: 2", "")
    cfg.write_text(text)
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 2
    assert "missing key 'train.epochs'" in result.stderr and "t.yaml" in result.stderr
    assert not (tmp_path / "out").exists()


def test_misspelt_config_key_gets_a_suggestion(tmp_path, synth_ds):
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "out", train__batchsize=8)
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 2
    assert "unknown key 'train.batchsize'; did you mean 'train.batch_size'?" in result.stderr


def test_bad_override_type(tmp_path, synth_ds):
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "out")
    result = invoke("train", "--config", str(cfg), "--set", "train.epochs=many")
    assert result.exit_code == 2
    assert "'train.epochs' must be int" in result.stderr


def test_pretrained_only_from_a_local_file(tmp_path):
    src = create_model("tiny-cnn", 5)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    dst = create_model("tiny-cnn", 5, pretrained=tmp_path / "w.pth")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ModelError, match="does not exist"):
        create_model("tiny-cnn", 5, pretrained=tmp_path / "missing.pth")


def test_heads_sized_for_a_thousand_classes_are_tamed_and_others_left_alone():
    import torchvision.models as tvm

    def head_std(model) -> float:
        return float([m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.detach().std())

    torch.manual_seed(0)
    as_made = head_std(tvm.get_model("mnasnet0_5", weights=None, num_classes=8))
    assert as_made > 0.3  # Kaiming by fan-out: 8 outputs make the 1,280-input head's weights huge
    assert 0.008 < head_std(create_model("mnasnet0_5", 8)) < 0.012  # N(0, 0.01), as MobileNet starts its head
    torch.manual_seed(0)
    resnet = tvm.get_model("resnet18", weights=None, num_classes=8)
    torch.manual_seed(0)
    assert head_std(create_model("resnet18", 8)) == head_std(resnet)  # a fan-in init is left as it is


def test_corrupt_canonical_model_is_detected(tmp_path, trained):
    copy = tmp_path / "m"
    shutil.copytree(trained.path, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        load_canonical(copy)
    (copy / "model_card.json").write_text("{not json")
    with pytest.raises(ModelError, match="malformed model card"):
        load_canonical(copy)


def test_inception_style_models_give_logits_in_train_mode():
    """googlenet's auxiliary heads would make the training loop receive a namedtuple instead of logits."""
    import torch

    from factory.train.models import create_model

    model = create_model("googlenet", 4).train()
    out = model(torch.zeros(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
