"""The ID-document flow (localise -> rectify -> classify) as one release: crops, build, validation, verification."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

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
    assert sorted(p.name for p in folder.iterdir()) == ["classify.tar.gz", "localise.tar.gz", "manifest.json",
                                                         "manifest.sig"]  # fmt: skip
    doc = json.loads((folder / "manifest.json").read_text())
    assert [s["stage"] for s in doc["pipeline"]["stages"]] == ["localise", "classify"]
    assert all(len(s["manifest_sha256"]) == 64 for s in doc["pipeline"]["stages"])
    v = doc["validation"]["end_to_end"]
    n = len(load_manifest(synth_ds).subset("test"))
    assert v["n"] == n == len(v["frames_correct"]) == len(v["frames_corner_error_pct"]) and v["passed"] is True
    assert v["frames_correct"].count("1") == round(v["top1_end_to_end"] * n)
    assert 0 <= v["top1_end_to_end"] <= 1 and v["interval_pt"][0] <= v["drop_pt"] <= v["interval_pt"][1]
    assert doc["pipeline"]["glue"]["rectify"]["size"] == [48, 32]  # the classifier's input size
    assert doc["latency"]["p50_ms"] > 0 and doc["validation"]["passed"] is True
    prof = doc["reference_profile"]
    assert sum(prof["predicted_class"]["counts"]) == prof["n"] == sum(prof["box_area"]["counts"]) > 0
    r = invoke("pipeline", "verify", str(folder), "--key", str(keypair[1]))
    assert r.exit_code == 0 and "ok: pipeline flow 0.1.0 for cpu" in r.stdout, r.output
    image = next((synth_ds / "images").rglob("*.jpg"))
    r = invoke("pipeline", "run", str(folder), str(image), "--key", str(keypair[1]))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["label"] in doc["labels"] and len(out["corners"]) == 8 and 0 < out["confidence"] <= 1


def _resign_with_member(folder, dest, stage, member_archive, key):
    """A copy of the release whose ``stage`` archive is another one, the pipeline re-signed with the build
    key: the member's bytes are listed, but it is not the bundle the pipeline names."""
    from factory.bundle.manifest import Manifest, file_entries

    shutil.copytree(folder, dest)
    shutil.copy(member_archive, dest / f"{stage}.tar.gz")
    m = Manifest.read(dest)
    m.files = file_entries(dest, list(m.files))
    m.write_signed(dest, key)


def test_a_tampered_or_swapped_member_refuses_the_whole_release(release, keypair, tmp_path):
    from factory.bundle.signing import generate_keys, load_private_key

    folder, _ = release
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    data = bytearray((tampered / "localise.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "localise.tar.gz").write_bytes(bytes(data))
    r = invoke("pipeline", "verify", str(tampered), "--key", str(keypair[1]))
    assert r.exit_code != 0 and "localise.tar.gz" in r.stderr and "tampered or corrupt" in r.stderr
    # re-signed by the build key, with the localiser's archive in the classifier's place: not the member named
    _resign_with_member(folder, tmp_path / "swapped", "classify", folder / "localise.tar.gz",
                        load_private_key(keypair[0]))  # fmt: skip
    r = invoke("pipeline", "verify", str(tmp_path / "swapped"), "--key", str(keypair[1]))
    assert r.exit_code != 0 and "classify: its manifest is not the one the signed pipeline names" in r.stderr
    r = invoke("pipeline", "run", str(tmp_path / "swapped"), str(folder / "manifest.json"), "--key", str(keypair[1]))
    assert r.exit_code != 0  # nothing runs from a refused release
    # a member signed by another key is refused even inside a correctly signed pipeline
    from factory.bundle.archive import pack, unpack

    other, _ = generate_keys(tmp_path / "other")
    member = unpack(folder / "classify.tar.gz", tmp_path / "member")
    from factory.bundle.manifest import Manifest

    Manifest.read(member).write_signed(member, load_private_key(other))
    _resign_with_member(folder, tmp_path / "foreign", "classify", pack(member, tmp_path / "c.tar.gz"),
                        load_private_key(keypair[0]))  # fmt: skip
    r = invoke("pipeline", "verify", str(tmp_path / "foreign"), "--key", str(keypair[1]))
    assert r.exit_code != 0 and "classify:" in r.stderr and "not signed by a trusted key" in r.stderr, r.stderr


def test_a_changed_stage_needs_a_new_pipeline_version(release, keypair):
    from factory.bundle.signing import load_private_key
    from factory.errors import ConfigError
    from factory.pipeline.chain_release import assemble_release

    folder, _ = release
    before = (folder / "manifest.json").read_bytes()
    doc = json.loads(before)
    config = {"name": "flow", "version": "0.1.0", "accuracy": {"max_drop_pt": 100.0}}
    with _members(folder) as members:
        other = {"localise": members["classify"], "classify": members["classify"]}  # another member under 0.1.0
        with pytest.raises(ConfigError, match="a changed stage is a new pipeline version"):
            assemble_release(config, "cpu", other, doc["validation"]["end_to_end"], load_private_key(keypair[0]),
                             folder.parents[2], profile={}, latency=doc["latency"])  # fmt: skip
    assert (folder / "manifest.json").read_bytes() == before  # untouched


@contextlib.contextmanager
def _members(folder):
    from factory.bundle.archive import unpack

    with tempfile.TemporaryDirectory() as tmp:
        yield {s: unpack(folder / f"{s}.tar.gz", Path(tmp) / s) for s in ("localise", "classify")}


@pytest.fixture(scope="module")
def faulty(release, chain, synth_ds, keypair):
    """Version 0.2.0 of the release with its classifier's logit of the first class pushed up by 20."""
    from factory.bundle.signing import load_private_key
    from factory.pipeline.chain_fault import faulty_release

    accuracy = {"max_drop_pt": 1.0, "confidence": 0.95, "inconclusive": "fail"}
    return faulty_release(release[0], chain["tmp"] / "bundles", "0.2.0", load_private_key(keypair[0]), synth_ds,
                          accuracy)  # fmt: skip


def test_a_pipeline_release_is_rolled_out_served_by_an_agent_and_a_bad_classifier_is_rolled_back(
    release, faulty, synth_ds, keypair, tmp_path
):
    """publish -> rollout -> an agent pulls, verifies and runs both stages, with per-stage telemetry; a
    release whose classifier says one class for everything is halted and rolled back by the fleet's
    telemetry; a device whose copy of a member was tampered with serves nothing from it."""
    import sqlalchemy as sa

    from factory.bundle.signing import load_public_key
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient
    from factory.device.simulate import Fleet, Knobs, load_images
    from factory.registry import db
    from tests.registry_server import start_registry

    folder, _ = release
    bad = faulty
    bad_doc = json.loads((bad / "manifest.json").read_text())
    assert bad_doc["validation"]["passed"] is False  # the chain's validation sees the fault
    assert bad_doc["pipeline"]["stages"][1]["version"].endswith("-fault")
    srv, settings, engine, admin, tokens = start_registry(
        tmp_path, keypair[1], {"window_seconds": 2, "evaluate_seconds": 0.0}, devices=("cam-1",)
    )
    try:
        client = RegistryClient(srv.url, admin)
        assert client.publish(folder)["created"] and client.publish(bad, allow_failed=True)["created"]
        client.create_rollout({"name": "flow-1", "release": {"name": "flow", "version": "0.1.0"},
                               "stages": [{"percent": 100}]})  # fmt: skip
        client.act("flow-1", "advance", "first release")
        agent = Agent(
            RegistryClient(srv.url, tokens["cam-1"]), model="flow", device_id="cam-1", target="cpu", tags=[],
            state_dir=tmp_path / "cam-1", bundle_key=load_public_key(keypair[1]), window_seconds=2,
        )  # fmt: skip
        assert agent.sync() == "switched None -> flow/0.1.0/cpu"
        frame = load_images(str(synth_ds))[0]
        out = agent.infer(frame)
        assert out["label"] in bad_doc["labels"] and out["corners"].shape == (4, 2)
        assert set(out["stage_ms"]) == {"localise", "rectify_classify"}
        agent.close_window()
        assert agent.upload()["sent"] == 1
        with engine.connect() as conn:
            (summary,) = [json.loads(r[0]) for r in conn.execute(sa.select(db.telemetry.c.summary)).all()]
        assert summary["release"] == {"name": "flow", "version": "0.1.0", "target": "cpu"}
        assert len(summary["predicted_class"]) == len(bad_doc["labels"])  # the classifier's class mix
        assert sum(summary["box_area"]) == 1 and sum(summary["confidence"]) == 1  # and the localiser's area
        # a member's archive damaged on the device (its folder and the download it would heal from)
        sha = json.loads((tmp_path / "cam-1" / "active.json").read_text())["sha256"]
        for f in (tmp_path / "cam-1" / "releases" / sha[:32] / "classify.tar.gz", tmp_path / "cam-1" / "downloads"
                  / f"{sha}.tar.gz"):  # fmt: skip
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(bytes(data))
        restarted = Agent(
            RegistryClient(srv.url, tokens["cam-1"]), model="flow", device_id="cam-1", target="cpu", tags=[],
            state_dir=tmp_path / "cam-1", bundle_key=load_public_key(keypair[1]), window_seconds=2,
        )  # fmt: skip
        assert restarted.runner is None and "classify.tar.gz" in restarted.last_error
        assert restarted.infer(frame) is None
        # the bad classifier through a staged rollout: the class mix collapses, the stage rolls back
        fleet = Fleet(client, model="flow", devices=12, targets=["cpu"], knobs=Knobs(latency_model_ms=2.0),
                      images=load_images(str(synth_ds)), cache=tmp_path / "cache", window_seconds=2)  # fmt: skip
        client.create_rollout({"name": "flow-2", "release": {"name": "flow", "version": "0.2.0"},
                               "stages": [{"percent": 50, "min_devices_reporting": 3}, {"percent": 100}],
                               "health": {"min_inferences": 40, "windows_to_halt": 2}})  # fmt: skip
        for _ in range(8):
            fleet.simulate(1, inferences=30)
            if client.rollout("flow-2")["status"] == "rolled_back":
                break
        assert client.rollout("flow-2")["status"] == "rolled_back"
        halt = next(e for e in client.audit(limit=100) if e["action"] == "rollout.rollback")
        assert "js_class" in json.dumps(halt), halt
        from factory.registry.history import release_history

        with engine.connect() as conn:  # the fleet view's release page names the stages
            page = release_history(conn, "flow", "0.2.0", "cpu")
        assert [s["stage"] for s in page["stages"]] == ["localise", "classify"]
        assert page["stages"][1]["version"].endswith("-fault") and "frames_correct" not in page["end_to_end"]
        assert page["end_to_end"]["n"] == bad_doc["validation"]["end_to_end"]["n"]
        client.close()
    finally:
        srv.stop()


def test_bench_times_a_pipeline_release_end_to_end_against_the_canonical_pair_in_eager(release, chain, tmp_path):
    folder, _ = release
    r = invoke("bench", str(chain["config"]), str(folder), "--seconds", "1", "--out", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    eager, cpu = report["artifacts"]
    assert eager["id"] == "pytorch-eager-chain" and eager["runtime"]["backend"] == "pytorch-eager"
    assert cpu["runtime"]["backend"] == "pipeline" and cpu["latency"]["p50_ms"] > 0
    assert cpu["speedup_vs_pytorch_eager"] == eager["latency"]["p50_ms"] / cpu["latency"]["p50_ms"]
    assert "build time" in cpu["accuracy"]["source"] and "yardstick" in eager["accuracy"]["skipped"]


def test_the_gate_pairs_two_pipeline_releases_end_to_end_and_per_stage(release, faulty, tmp_path):
    folder, _ = release
    r = invoke("bench", str(folder), "--seconds", "1", "--out", str(tmp_path / "base"))
    assert r.exit_code == 0, r.output
    r = invoke("bench", str(faulty), "--seconds", "1", "--out", str(tmp_path / "cand"))
    assert r.exit_code == 0, r.output
    acc = json.loads((tmp_path / "cand" / "report.json").read_text())["artifacts"][0]["accuracy"]
    assert acc["top1"] == json.loads((faulty / "manifest.json").read_text())["validation"]["end_to_end"][
        "top1_end_to_end"]  # fmt: skip
    r = invoke("gate", "--candidate", str(tmp_path / "cand"), "--baseline", str(tmp_path / "base" / "report.json"),
               "--policy", "configs/gates.yaml", "--out", str(tmp_path / "verdict.json"))  # fmt: skip
    assert r.exit_code == 1, r.output
    checks = json.loads((tmp_path / "verdict.json").read_text())["checks"]
    names = [(c["check"], c["artifact"]) for c in checks]
    assert ("accuracy", "cpu end-to-end") in names and ("accuracy", "cpu localise") in names
    e2e = next(c for c in checks if c["artifact"] == "cpu end-to-end")
    local = next(c for c in checks if c["artifact"] == "cpu localise")
    assert not e2e["passed"] and e2e["verdict"] != "pass", (
        e2e
    )  # one class for everything (tiny models: may be inconclusive)
    assert local["increase_pct"] == 0.0  # the localiser is the same member: its corners did not move
    r = invoke("gate", "--candidate", str(tmp_path / "base"), "--baseline", str(tmp_path / "base" / "report.json"),
               "--policy", "configs/gates.yaml", "--out", str(tmp_path / "same.json"))  # fmt: skip
    same = json.loads((tmp_path / "same.json").read_text())["checks"]
    same = {c["artifact"]: c for c in same if c["check"] == "accuracy"}
    assert same["cpu end-to-end"]["drop_pt"] == 0 and same["cpu localise"]["increase_pct"] == 0


def test_each_stage_may_take_its_own_recipe(chain, release, keypair, loose_targets):
    out = chain["tmp"] / "mixed"
    config = chain["tmp"] / "flow-mixed.yaml"
    config.write_text(chain["config"].read_text().replace("0.1.0", "0.4.0"))
    common = ["pipeline", "build", str(config), "--target", "cpu", "--key", str(keypair[0]), "--targets-dir",
              str(loose_targets), "--out", str(out), "--no-track", "--cache-dir",
              str(chain["tmp"] / "cache")]  # fmt: skip
    r = invoke(*common, "--stage-set", "classifier:recipe.precision=int8-static")
    assert r.exit_code == 2 and "STAGE:KEY=VALUE" in r.stderr and not out.exists()
    r = invoke(*common, "--stage-set", "classify:recipe.precision=int8-static")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "flow" / "0.4.0" / "cpu" / "manifest.json").read_text())
    assert {s["stage"]: s["precision"] for s in doc["pipeline"]["stages"]} == {"localise": "fp32",
                                                                               "classify": "int8-static"}  # fmt: skip
    assert doc["recipe"]["precision"] == "fp32+int8-static"
