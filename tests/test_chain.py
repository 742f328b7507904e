"""The ID-document flow (localise -> rectify -> classify) as one release: crops, build, validation, verification."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import invoke, write_train_config


@pytest.fixture(scope="module")
def chain(tmp_path_factory, synth_ds):
    """A tiny localiser, the crops it cuts, a tiny classifier trained on them, and a pipeline YAML."""
    tmp = tmp_path_factory.mktemp("chain")
    cfg = write_train_config(tmp / "loc.yaml", synth_ds / "dataset.json", tmp / "loc",
                             model__task="document-localisation", train__epochs=2,
                             tracking__log_model=False)  # fmt: skip
    assert (r := invoke("train", "--config", str(cfg))).exit_code == 0, r.output
    crops = invoke("pipeline", "crops", "--localiser", str(tmp / "loc"), "--data", str(synth_ds), "--out",
                   str(tmp / "crops"), "--size", "48x32", "--copies", "2")  # fmt: skip
    assert crops.exit_code == 0, crops.output
    cfg = write_train_config(tmp / "cls.yaml", tmp / "crops" / "dataset.json", tmp / "cls",
                             model__image_size=[32, 48], train__epochs=2, tracking__log_model=False)  # fmt: skip
    assert (r := invoke("train", "--config", str(cfg))).exit_code == 0, r.output
    pipeline = tmp / "flow.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "flow", "version": "0.1.0", "localise": str(tmp / "loc"), "classify": str(tmp / "cls"),
        "data": str(synth_ds), "accuracy": {"max_drop_pt": 100.0},  # tiny models: the rule, not the margin
    }))  # fmt: skip
    return {"tmp": tmp, "crops": json.loads(crops.stdout), "config": pipeline}


def test_crops_keep_their_frames_split_and_only_training_frames_are_jittered(chain, synth_ds):
    from factory.data.manifest import load_manifest

    frames, crops = load_manifest(synth_ds), load_manifest(chain["tmp"] / "crops")
    split = {f.sha256: f.split for f in frames.files}
    assert all(c.split == split[c.group] for c in crops.files)  # no test frame is ever trained on
    per = {s: sum(1 for f in frames.files if f.split == s) for s in ("train", "val", "test")}
    assert chain["crops"]["per_split"] == {"train": 2 * per["train"], "val": per["val"], "test": per["test"]}
    assert chain["crops"]["jitter_pct"] == chain["crops"]["localiser_val_corner_error_pct"] > 0
    assert crops.source["kind"] == "crops" and crops.source["frames"]["dataset_hash"] == frames.dataset_hash


@pytest.fixture(scope="module")
def release(chain, keypair, loose_targets):
    out = chain["tmp"] / "bundles"
    r = invoke("pipeline", "build", str(chain["config"]), "--target", "cpu", "--key", str(keypair[0]),
               "--targets-dir", str(loose_targets), "--out", str(out), "--no-track",
               "--cache-dir", str(chain["tmp"] / "cache"))  # fmt: skip
    assert r.exit_code == 0, r.output
    return out / "flow" / "0.1.0" / "cpu", r


def test_a_pipeline_is_built_validated_end_to_end_and_signed_as_one_release(release, synth_ds, keypair):
    from factory.data.manifest import load_manifest

    folder, result = release
    assert "| target | end-to-end top-1 | canonical |" in result.stdout
    doc = json.loads((folder / "pipeline.json").read_text())
    assert [s["stage"] for s in doc["stages"]] == ["localise", "classify"]
    assert all(len(s["manifest_sha256"]) == 64 for s in doc["stages"])
    v = doc["validation"]
    assert v["n"] == len(load_manifest(synth_ds).subset("test")) and v["passed"] is True
    assert 0 <= v["top1_end_to_end"] <= 1 and v["interval_pt"][0] <= v["drop_pt"] <= v["interval_pt"][1]
    assert doc["glue"]["rectify"]["size"] == [48, 32]  # the classifier's input size
    r = invoke("pipeline", "verify", str(folder), "--key", str(keypair[1]))
    assert r.exit_code == 0 and "ok: pipeline flow 0.1.0 for cpu" in r.stdout, r.output
    image = next((synth_ds / "images").rglob("*.jpg"))
    r = invoke("pipeline", "run", str(folder), str(image), "--key", str(keypair[1]))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    labels = json.loads((folder / "classify" / "manifest.json").read_text())["labels"]
    assert out["label"] in labels and len(out["corners"]) == 8 and 0 < out["confidence"] <= 1


def test_a_tampered_or_swapped_member_refuses_the_whole_release(release, keypair, tmp_path):
    folder, _ = release
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    model = next(p for p in (tampered / "localise").iterdir() if p.suffix == ".onnx")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    r = invoke("pipeline", "verify", str(tampered), "--key", str(keypair[1]))
    assert r.exit_code != 0 and "localise" in r.stderr and "tampered or corrupt" in r.stderr
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    shutil.rmtree(swapped / "classify")
    shutil.copytree(folder / "localise", swapped / "classify")  # a valid signed bundle, but not the one named
    r = invoke("pipeline", "verify", str(swapped), "--key", str(keypair[1]))
    assert r.exit_code != 0 and "classify: its manifest is not the one the signed pipeline names" in r.stderr
    r = invoke("pipeline", "run", str(swapped), str(folder / "pipeline.json"), "--key", str(keypair[1]))
    assert r.exit_code != 0  # nothing runs from a refused release


def test_a_changed_stage_needs_a_new_pipeline_version(release, keypair):
    from factory.bundle.signing import load_private_key
    from factory.errors import ConfigError
    from factory.pipeline.chain_release import assemble_release

    folder, _ = release
    doc = json.loads((folder / "pipeline.json").read_text())
    config = {"name": "flow", "version": "0.1.0"}
    other = {"localise": folder / "classify", "classify": folder / "classify"}  # another member under 0.1.0
    with pytest.raises(ConfigError, match="a changed stage is a new pipeline version"):
        assemble_release(config, "cpu", other, doc["validation"], load_private_key(keypair[0]), folder.parents[2])
    assert json.loads((folder / "pipeline.json").read_text()) == doc  # untouched
