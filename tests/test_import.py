"""`factory model import`: models the factory did not train, through every stage a trained one goes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory.train.canonical import load_canonical
from tests.conftest import build_args, invoke, quick_search
from tests.foreign import hand_built_onnx

BGR = ("--color-order", "BGR", "--mean", "0.5", "--std", "0.5")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, trained):
    """The hand-built ONNX graph of the session's trained tiny-cnn (see tests/foreign.py)."""
    return hand_built_onnx(trained.weights, tmp_path_factory.mktemp("foreign") / "classifier.onnx")


@pytest.fixture(scope="module")
def imported(tmp_path_factory, foreign, synth_ds):
    out = tmp_path_factory.mktemp("imported") / "model"
    result = invoke(
        "model",
        "import",
        str(foreign),
        "--data",
        str(synth_ds),
        "--out",
        str(out),
        "--size",
        "32x48",
        "--name",
        "foreign",
        *BGR,
    )
    assert result.exit_code == 0, result.output
    return load_canonical(out)


def _trained_logits(trained, synth_ds, size):
    """The trained model's scores on the test split, preprocessed as it was trained (RGB, ImageNet stats)."""
    import torch

    from factory.data.manifest import load_manifest
    from factory.data.splits import load_split

    spec = {**trained.preprocessing, "resize": list(size)}
    x, _ = load_split(load_manifest(synth_ds), "test", spec, trained.labels)
    with torch.no_grad():
        return trained.build_module()(torch.from_numpy(x)).numpy()


def test_a_hand_built_onnx_graph_is_imported_as_the_model_it_transcribes(imported, foreign, trained, synth_ds):
    """opset 11, BGR with mean/std 0.5, softmax output, dynamic H/W, imported at a non-square size: the
    canonical graph computes the trained model's logits exactly (the Softmax was removed)."""
    from factory.data.manifest import load_manifest
    from factory.data.splits import load_split
    from factory.train.canonical import onnx_logits

    card = imported.card
    assert card["source"]["kind"] == "onnx" and card["source"]["source_opset"] == 11
    assert card["source"]["outputs_are"] == "probabilities" and "Softmax" in card["source"]["removed"]
    assert card["lineage"]["imported"]["sha256"] == card["source"]["sha256"]
    assert card["preprocessing"]["color_order"] == "BGR" and card["preprocessing"]["resize"] == [32, 48]
    assert card["input"]["color_order"] == "BGR" and "weights" not in card["files"]
    assert card["architecture"] == "imported:onnx" and not imported.has_architecture
    assert imported.identity == card["files"]["onnx"]["sha256"]
    assert card["onnx_parity"]["max_abs_diff"] < 1e-5 and card["onnx_parity"]["against"] == "source"
    x, _ = load_split(load_manifest(synth_ds), "test", imported.preprocessing, imported.labels)
    ours = onnx_logits(imported.onnx, x)
    assert np.abs(ours - _trained_logits(trained, synth_ds, (32, 48))).max() < 1e-4
    profile = card["reference_profile"]
    assert profile["split"] == "val" and sum(profile["confidence"]["counts"]) == profile["n"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,precision", [("cpu", "fp32"), ("cpu", "int8-static"), ("openvino", "int8-static"), ("tflite", "fp32")]
)
def test_an_imported_onnx_graph_builds_for_every_runtime(tmp_path, imported, keypair, loose_targets, target, precision):
    """LiteRT included: the graph reaches litert-torch through onnx2torch."""
    from factory.device.loader import open_bundle

    result = invoke(
        *build_args(
            imported.path, target, keypair, loose_targets, tmp_path / "b", "--precision", precision, "--no-track"
        )
    )
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "b").glob(f"foreign/*/{target}"))
    m, runner = open_bundle(folder)
    assert m.preprocessing["color_order"] == "BGR" and m.input["shape"][1:] == [3, 32, 48]
    assert m.lineage["canonical"]["weights_sha256"] == imported.identity
    parity = m.validation["parity"]
    if precision == "fp32":
        assert parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
    assert runner(np.zeros((2, 3, 32, 48), np.float32)).shape == (2, len(imported.labels))


def test_pruning_an_import_without_architecture_is_refused_with_the_way_out(tmp_path, imported, keypair, loose_targets):
    result = invoke(
        *build_args(
            imported.path,
            "cpu",
            keypair,
            loose_targets,
            tmp_path / "b",
            "--no-track",
            "--set",
            "recipe.pruning.method=structured",
            "--set",
            "recipe.pruning.ratio=0.5",
        )
    )
    assert result.exit_code != 0
    assert "no torch module to prune" in result.output and "--architecture" in result.output
    assert not list((tmp_path / "b").glob("*/*/cpu/manifest.json"))


def _refused(result, out):
    assert result.exit_code == 2, result.output
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return result.output


def test_bad_inputs_get_one_clear_error_each_and_nothing_written(tmp_path, foreign, trained, synth_ds):
    out = tmp_path / "model"
    args = ("--data", str(synth_ds), "--out", str(out))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model\n" * 10)
    text = _refused(invoke("model", "import", str(junk), *args, "--size", "32x32"), out)
    assert "is not an ONNX model" in text
    labels = ",".join([*trained.labels, "other"])
    text = _refused(invoke("model", "import", str(foreign), *args, "--size", "32x32", "--labels", labels, *BGR), out)
    assert "returns [8] scores per image, and there are 9 labels" in text
    fixed = hand_built_onnx(trained.weights, tmp_path / "fixed.onnx", fixed_hw=(32, 32))
    text = _refused(invoke("model", "import", str(fixed), *args, "--size", "32x48", *BGR), out)
    assert "fixed at width 32, not the 48" in text
    text = _refused(invoke("model", "import", str(foreign), *args, "--size", "32x32", "--layout", "NHWC"), out)
    assert "is NCHW" in text and "--layout NCHW" in text
    weights = _refused(invoke("model", "import", str(trained.weights), *args, "--size", "32x32"), out)
    assert "is a state_dict" in weights and "--architecture" in weights
    wrong = _refused(
        invoke("model", "import", str(trained.weights), *args, "--size", "32x32", "--architecture", "resnet18"), out
    )
    assert "does not fit the architecture" in wrong and "missing" in wrong


def test_foreign_layouts_are_conformed(tmp_path, trained, synth_ds):
    """NHWC input, a Reshape that pins the batch at 1 and a second output: each made canonical, same scores."""
    from factory.train.canonical import onnx_logits

    variants = {"nhwc": ("--layout", "NHWC"), "reshape_batch": (), "extra_output": ("--output", "probabilities")}
    reference = _trained_logits(trained, synth_ds, (32, 32))
    for flag, extra in variants.items():
        src = hand_built_onnx(trained.weights, tmp_path / f"{flag}.onnx", **{flag: True})
        out = tmp_path / flag
        result = invoke(
            "model", "import", str(src), "--data", str(synth_ds), "--out", str(out), "--size", "32x32", *BGR, *extra
        )
        assert result.exit_code == 0, f"{flag}: {result.output}"
        model = load_canonical(out)
        from factory.data.manifest import load_manifest
        from factory.data.splits import load_split

        x, _ = load_split(load_manifest(synth_ds), "test", model.preprocessing, model.labels)
        assert np.abs(onnx_logits(model.onnx, x) - reference).max() < 1e-4, flag
    assert "freed_batch" in load_canonical(tmp_path / "reshape_batch").card["source"]
    result = invoke(
        "model",
        "import",
        str(tmp_path / "extra_output.onnx"),
        "--data",
        str(synth_ds),
        "--out",
        str(tmp_path / "two"),
        "--size",
        "32x32",
        *BGR,
    )
    assert result.exit_code == 2 and "choose one with --output" in result.output


@pytest.fixture(scope="module")
def torch_sources(tmp_path_factory, trained):
    """The trained model as users bring it: a wrapped checkpoint, .pt2 programs, TorchScript."""
    import torch

    folder = tmp_path_factory.mktemp("torch-sources")
    module = trained.build_module()
    batch = torch.export.Dim("batch", min=1, max=1024)
    x = torch.zeros(2, 3, 32, 32)
    torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)), folder / "dynamic.pt2")
    torch.export.save(torch.export.export(module, (x[:1],)), folder / "static.pt2")
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.trace(module, x[:1]), folder / "scripted.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}, folder / "checkpoint.pth")
    return folder


@pytest.mark.parametrize(
    "source,extra,kind",
    [
        ("checkpoint.pth", ("--architecture", "tiny-cnn"), "state-dict"),
        ("dynamic.pt2", ("--architecture", "tiny-cnn"), "torch-export"),
        ("dynamic.pt2", (), "torch-export"),
        ("scripted.pt", (), "torchscript"),
    ],
)
def test_torch_sources_import_with_the_trained_models_figures(
    tmp_path, torch_sources, trained, synth_ds, source, extra, kind
):
    out = tmp_path / "model"
    result = invoke(
        "model",
        "import",
        str(torch_sources / source),
        "--data",
        str(synth_ds),
        "--out",
        str(out),
        "--size",
        "32x32",
        *extra,
    )
    assert result.exit_code == 0, result.output
    model = load_canonical(out)
    assert model.card["source"]["kind"] == kind
    assert model.card["metrics"]["test"]["confusion_matrix"] == trained.card["metrics"]["test"]["confusion_matrix"]
    assert model.card["onnx_parity"]["max_abs_diff"] < 1e-5
    assert model.has_architecture == bool(extra)
    if extra:  # the trained model's very weights, so the very same identity and training config shape
        assert model.identity == trained.identity
        assert model.card["lineage"]["config_values"]["model"]["architecture"] == "tiny-cnn"
    elif kind == "torch-export":
        assert "program" in model.card["files"]


def test_a_program_with_a_fixed_batch_is_refused(tmp_path, torch_sources, synth_ds):
    out = tmp_path / "model"
    text = _refused(
        invoke(
            "model",
            "import",
            str(torch_sources / "static.pt2"),
            "--data",
            str(synth_ds),
            "--out",
            str(out),
            "--size",
            "32x32",
        ),
        out,
    )
    assert "fixed batch of 1" in text and "dynamic_shapes" in text


@pytest.mark.slow
def test_a_state_dict_import_prunes_and_builds_as_the_trained_model_does(
    tmp_path, torch_sources, trained, synth_ds, keypair, loose_targets
):
    out = tmp_path / "model"
    result = invoke(
        "model",
        "import",
        str(torch_sources / "checkpoint.pth"),
        "--architecture",
        "tiny-cnn",
        "--data",
        str(synth_ds),
        "--out",
        str(out),
        "--size",
        "32x32",
    )
    assert result.exit_code == 0, result.output
    prune = (
        "--set",
        "recipe.pruning.method=structured",
        "--set",
        "recipe.pruning.ratio=0.5",
        "--set",
        "recipe.pruning.finetune_epochs=1",
        "--no-track",
    )
    parities = []
    for name, model in (("imported", out), ("trained", trained.path)):
        result = invoke(*build_args(model, "cpu", keypair, loose_targets, tmp_path / name, *prune))
        assert result.exit_code == 0, result.output
        manifest = json.loads(next((tmp_path / name).glob("*/*/cpu/manifest.json")).read_text())
        assert manifest["recipe"]["pruning_applied"]["method"] == "structured"
        parities.append(
            {k: manifest["validation"]["parity"][k] for k in ("top1", "top1_agreement", "accuracy_drop_pt")}
        )
    assert parities[0] == parities[1]


def test_bench_takes_the_source_file_beside_the_imported_model(tmp_path, imported, foreign):
    result = invoke(
        "-q",
        "bench",
        str(imported.path),
        str(foreign),
        "--input-shape",
        "1,3,32,48",
        "--seconds",
        "1",
        "--rounds",
        "20",
        "--warmup",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {r["id"]: r for r in report["artifacts"]}
    assert set(rows) == {"pytorch-eager", "classifier.onnx"}
    assert all(r["latency"]["p50_ms"] > 0 for r in rows.values())


@pytest.mark.slow
def test_the_search_takes_an_imported_graph(tmp_path, imported, keypair, loose_targets):
    result, summary = quick_search(imported.path, keypair, loose_targets, tmp_path)
    assert result.exit_code == 0, result.output
    assert {c["status"] for c in summary["candidates"]} <= {"feasible", "rejected", "inconclusive"}
    assert sum(bool(c["winner"]) for c in summary["candidates"]) == 1
    manifest = json.loads(next((tmp_path / "b").glob("foreign/*/cpu/manifest.json")).read_text())
    assert manifest["lineage"]["canonical"]["weights_sha256"] == imported.identity


def test_an_imported_bundle_is_published_rolled_out_run_and_reported_by_a_device(
    tmp_path, imported, keypair, loose_targets, synth_ds
):
    import sqlalchemy as sa

    from factory.registry import db
    from tests.registry_server import roll_out_and_run, start_registry

    result = invoke(*build_args(imported.path, "cpu", keypair, loose_targets, tmp_path / "b", "--no-track"))
    assert result.exit_code == 0, result.output
    bundle = next((tmp_path / "b").glob("foreign/*/cpu"))
    srv, _settings, engine, admin, tokens = start_registry(tmp_path / "reg", keypair[1], devices=("cam-1",))
    try:
        answers, sent = roll_out_and_run(srv, admin, tokens["cam-1"], bundle, device_id="cam-1", target="cpu",
                                         state_dir=tmp_path / "state", trusted_pub=keypair[1],
                                         images=synth_ds / "images")  # fmt: skip
        assert all(a is not None and a[0] in imported.labels and 0 < a[1] <= 1 for a in answers), answers
        assert sent["sent"] == 1
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(db.telemetry)).scalar() == 1
    finally:
        srv.stop()


def test_a_graph_onnx2torch_cannot_convert_still_builds_for_onnx_runtime_and_openvino(
    tmp_path, trained, synth_ds, keypair, loose_targets
):
    """PyTorch's own exporter (opset 18) writes the tiny-cnn's pooling as ReduceMean, which onnx2torch cannot
    convert: the ONNX Runtime and OpenVINO routes take the graph as it is and never need a torch module (they
    used to build one anyway and failed); LiteRT, which does, is a failed row naming the operator."""
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(trained.labels) + "\n")
    out = tmp_path / "model"
    mean, std = (",".join(map(str, trained.preprocessing[k])) for k in ("mean", "std"))
    result = invoke("model", "import", str(trained.onnx), "--data", str(synth_ds), "--out", str(out), "--size",
                    "32x32", "--labels", str(labels), "--mean", mean, "--std", std, "--name", "exported")  # fmt: skip
    assert result.exit_code == 0, result.output
    args = build_args(out, "cpu", keypair, loose_targets, tmp_path / "b", "--target", "openvino", "--target",
                      "tflite", "--no-track")  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    for target in ("cpu", "openvino"):
        assert (tmp_path / "b" / "exported" / "0.1.0" / target / "manifest.sig").is_file(), target
    row = next(line for line in result.output.splitlines() if line.startswith("| tflite |"))
    assert "FAILED" in row and "ReduceMean" in row
    assert not (tmp_path / "b" / "exported" / "0.1.0" / "tflite").exists()
    # the bench has no eager baseline for it: the canonical graph runs in ONNX Runtime instead, and says so
    result = invoke("-q", "bench", str(out), str(tmp_path / "b" / "exported"), "--seconds", "0.5", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)["artifacts"]}
    assert set(rows) == {"canonical-onnx", "cpu@0.1.0", "openvino@0.1.0"}
    assert "ReduceMean" in rows["canonical-onnx"]["note"] and rows["cpu@0.1.0"]["speedup_vs_pytorch_eager"] is None
