"""Detection: frames with 0..3 documents, the importers and their checks, the task's NumPy side (decode, NMS,
COCO mAP, paired parity), telemetry per task, and a tiny detector through training, every runtime and a fleet."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from factory.data.manifest import load_manifest
from factory.tasks import get_task
from factory.tasks.detection import average_precision, box_iou, match, nms
from tests.conftest import FRAME_TYPES as TYPES
from tests.conftest import TARGET_OF, invoke


def _task(classes=3, grid=(4, 5)):
    return get_task("detection", {"classes": classes, "grid": list(grid)})


# ---------------------------------------------------------------------------------------------- data


def test_frames_hold_zero_to_three_documents_with_boxes_and_empty_frames_are_counted(frames_ds, tmp_path):
    m = load_manifest(frames_ds)
    per_frame = [len(r.objects) for r in m.files]
    assert m.detection and set(per_frame) == {0, 1, 2, 3} and sorted(m.classes) == sorted(TYPES.split(","))
    assert sum(m.negatives().values()) == per_frame.count(0) > 0
    for r in m.files:
        for o in r.objects:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= r.width and 0 <= y1 < y2 <= r.height and len(o["quad"]) == 4
    result = invoke("data", "report", str(frames_ds), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    prof = json.loads((tmp_path / "rep" / "profile.json").read_text())["objects"]
    assert prof["objects"] == sum(per_frame) and prof["per_frame"]["0"] == per_frame.count(0)
    assert 0 < prof["box_area_frac"]["mean"] < 1


def test_same_seed_same_frames(frames_ds, tmp_path):
    from factory.data.synth import synthesize_frames

    again = synthesize_frames(tmp_path / "again", seed=5, frames=72, size=(96, 80), classes=TYPES.split(","))
    assert again.dataset_hash == load_manifest(frames_ds).dataset_hash


def test_cvat_boxes_and_coco_round_trip(frames_ds, tmp_path):
    src = load_manifest(frames_ds)
    boxes = sorted((r.sha256, [o["box"] for o in r.objects]) for r in src.files)
    r = invoke("data", "import", "cvat", str(frames_ds), "--annotations", str(frames_ds / "annotations.xml"),
               "--task", "detection", "--out", str(tmp_path / "cvat"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "objects of 3 classes" in r.output
    assert sorted((x.sha256, [o["box"] for o in x.objects]) for x in load_manifest(tmp_path / "cvat").files) == boxes
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 7, "name": c} for i, c in enumerate(src.classes)],
    }
    for j, rec in enumerate(src.files):
        coco["images"].append({"id": j, "file_name": rec.path, "width": rec.width, "height": rec.height})
        for o in rec.objects:
            x1, y1, x2, y2 = o["box"]
            row = {"id": len(coco["annotations"]), "image_id": j, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            coco["annotations"].append(row | {"category_id": src.classes.index(o["label"]) + 7, "iscrowd": 0})
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    r = invoke("data", "import", "coco", str(frames_ds), "--annotations", str(tmp_path / "coco.json"),
               "--out", str(tmp_path / "coco"))  # fmt: skip
    assert r.exit_code == 0, r.output
    got = load_manifest(tmp_path / "coco")
    assert sorted(got.classes) == sorted(src.classes)
    assert sorted((x.sha256, [[round(v, 2) for v in o["box"]] for o in x.objects]) for x in got.files) == boxes
    assert sum(got.negatives().values()) == sum(src.negatives().values())


def test_bad_boxes_are_all_reported_at_once_with_file_and_line(frames_ds, tmp_path):
    tree = ET.parse(frames_ds / "annotations.xml")
    with_boxes = [im for im in tree.getroot().findall("image") if im.find("box") is not None]
    with_boxes[0].find("box").set("xbr", "500")  # outside the 96x80 frame
    with_boxes[1].find("box").set("ytl", with_boxes[1].find("box").get("ybr"))  # no height
    with_boxes[2].find("box").set("label", "library-card")  # not declared
    bad = tmp_path / "bad.xml"
    tree.write(bad)
    lines = bad.read_text().splitlines()
    r = invoke("data", "import", "cvat", str(frames_ds), "--annotations", str(bad), "--task", "detection",
               "--out", str(tmp_path / "ds"))  # fmt: skip
    assert r.exit_code == 2 and "3 problem(s)" in r.stderr
    assert "extends outside the 96x80 image" in r.stderr and "degenerate box" in r.stderr
    assert "'library-card' is not in the class list" in r.stderr
    for where in [line for line in r.stderr.splitlines() if line.strip().startswith("- ")]:
        n = int(where.split(f"{bad}:")[1].split(":")[0])
        assert "<box" in lines[n - 1], where  # the line named is the box's own
    assert not (tmp_path / "ds").exists()


def test_coco_problems_name_the_entry_and_a_polygon_that_is_not_a_quad_fails_localisation(frames_ds, tmp_path):
    coco = {"images": [{"id": 1, "file_name": load_manifest(frames_ds).files[0].path, "width": 96, "height": 80}],
            "annotations": [{"id": 5, "image_id": 1, "bbox": [10, 10, 0, 4], "category_id": 1},
                            {"id": 6, "image_id": 1, "bbox": [10, 10, 5, 5], "category_id": 9},
                            {"id": 7, "image_id": 42, "bbox": [1, 1, 5, 5], "category_id": 1}],
            "categories": [{"id": 1, "name": "part"}]}  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    r = invoke("data", "import", "coco", str(frames_ds), "--annotations", str(tmp_path / "c.json"), "--out",
               str(tmp_path / "o"))  # fmt: skip
    assert r.exit_code == 2 and "3 problem(s)" in r.stderr
    assert "annotations[0]" in r.stderr and "annotations[1] (id 6): category_id 9" in r.stderr
    assert "annotations[2] (id 7): image_id 42" in r.stderr
    tree = ET.parse(frames_ds / "annotations.xml")
    one = next(im for im in tree.getroot().findall("image") if len(im.findall("polygon")) == 1)
    one.find("polygon").set("points", "1,1;20,1;20,20;10,25;1,20")
    for im in tree.getroot().findall("image"):
        if im is not one:
            tree.getroot().remove(im)
    tree.write(tmp_path / "poly.xml")
    r = invoke("data", "import", "cvat", str(frames_ds), "--annotations", str(tmp_path / "poly.xml"), "--task",
               "document-localisation", "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.exit_code == 2 and "a document quad needs exactly 4 points, got 5" in r.stderr


def test_annotation_kinds_of_the_data_layer_match_the_tasks():
    from factory.data.objects import ANNOTATIONS

    assert {name: get_task(name).annotation for name in ANNOTATIONS} == ANNOTATIONS


# ---------------------------------------------------------------------------------------------- the task


def _frames(n=40, seed=0):
    rng = np.random.default_rng(seed)
    t = np.full((n, 3, 5), -1.0, np.float32)
    for i in range(n):
        for j in range(int(rng.integers(0, 4))):  # one object per quadrant: they never overlap
            x, y = (j % 2) * 0.5 + rng.uniform(0.02, 0.15), (j // 2) * 0.5 + rng.uniform(0.02, 0.15)
            t[i, j] = (rng.integers(0, 3), x, y, x + 0.3, y + 0.3)
    return t


def _raw(task, targets):
    """The output a perfect model gives: the training encoding (heatmaps + offsets + sizes), flattened."""
    rows = []
    for t in targets:
        heat, reg = task.encode(t)
        rows.append(np.concatenate([heat, reg[1:]]).reshape(-1))
    return np.stack(rows)


def test_decode_of_the_training_encoding_gives_back_the_boxes_and_map_is_one():
    task = _task(grid=(16, 20))
    t = _frames()
    dets = task.postprocess(_raw(task, t))["detections"]
    for d, truth in zip(dets, t, strict=True):
        truth = truth[truth[:, 0] >= 0]
        assert len(d) == len(truth)
        assert np.allclose(np.sort(d[:, :4], 0), np.sort(truth[:, 1:], 0), atol=1e-5)
    m = task.metrics(_raw(task, t), t)
    assert m["map50"] == 1.0 and m["map"] == 1.0 and m["objects"] == int((t[..., 0] >= 0).sum())


def test_map_counts_misses_duplicates_and_wrong_classes():
    t = np.array([[[0, 0.1, 0.1, 0.5, 0.5], [1, 0.6, 0.6, 0.9, 0.9]]], np.float32)
    exact = [np.array([[0.1, 0.1, 0.5, 0.5, 0.9, 0], [0.6, 0.6, 0.9, 0.9, 0.8, 1]], np.float32)]
    assert average_precision(match(exact, t))[0] == 1.0
    missed = [exact[0][:1]]  # class 1 never found: AP 0 for it, 1 for class 0
    assert average_precision(match(missed, t))[0] == pytest.approx(0.5)
    dup = [np.vstack([exact[0], [[0.1, 0.1, 0.5, 0.5, 0.95, 1]]])]  # a confident box of the wrong class first
    ap = average_precision(match(dup, t))[0]
    assert 0.5 < ap < 1.0
    shifted = [exact[0] + np.array([0.25, 0, 0.25, 0, 0, 0], np.float32)]  # IoU below 0.5
    assert average_precision(match(shifted, t))[0] == 0.0


def test_nms_keeps_the_best_box_per_class():
    boxes = np.array([[0, 0, 1, 1], [0.05, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]], np.float64)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 2, 3]
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(0.95)


def test_parity_is_a_paired_interval_of_the_map_drop():
    task = _task(grid=(16, 20))
    t = _frames(60)
    ref = _raw(task, t)
    worse = ref.copy().reshape(len(t), 7, 16, 20)
    worse[::3, :3] = 0  # a third of the frames lose every detection
    p = task.parity(worse.reshape(len(t), -1), ref, t, rounds=300)
    assert p["canonical_map50"] == 1.0 and p["map50_drop_pt"] > 10
    lo, hi = p["drop_interval_pt"]
    assert lo <= p["map50_drop_pt"] <= hi and lo > 0
    same = task.parity(ref, ref, t, rounds=50)
    assert same["map50_drop_pt"] == 0 and same["drop_interval_pt"] == [0, 0]


def test_targets_refuse_unknown_labels_and_keep_empty_frames():
    from factory.data.manifest import Record

    task = _task()
    recs = [Record("a.jpg", "0" * 64, "", 100, 50, objects=[{"label": "b", "box": [10, 5, 60, 45]}]),
            Record("b.jpg", "1" * 64, "", 100, 50, objects=[])]  # fmt: skip
    t = task.targets(recs, ["a", "b"])
    assert t.shape == (2, 1, 5) and t[0, 0].tolist() == pytest.approx([1, 0.1, 0.1, 0.6, 0.9]) and t[1, 0, 0] == -1
    with pytest.raises(KeyError):
        task.targets(recs, ["a"])


def test_outcomes_and_telemetry_per_task():
    from factory.device.telemetry import Window, validate_summary

    task = _task(grid=(16, 20))
    t = _frames(10)
    outcomes = task.outcomes(_raw(task, t))
    assert [o["objects"] for o in outcomes] == [int((f[:, 0] >= 0).sum()) for f in t]
    assert all(o["cls"] == 3 for o, f in zip(outcomes, t, strict=True) if (f[:, 0] < 0).all())  # "(no object)"
    w = Window("dev-1", "cpu", [], {"name": "m", "version": "1.0.0", "target": "cpu"}, 4, seconds=60)
    for o in outcomes:
        w.add(1.0, o, (100.0, 30.0))
    s = w.summary()
    assert sum(s["objects"]) == 10 and sum(s["box_area"]) == sum(o["objects"] for o in outcomes)
    validate_summary(json.loads(json.dumps(s)))
    for bad in ({"objects": s["objects"][:-1] + [s["objects"][-1] + 1]}, {"box_area": None}):
        with pytest.raises(Exception, match="objects|box_area"):
            validate_summary(s | bad)
    profile = task.reference_profile(_raw(task, t), ["a", "b", "c"], [(100.0, 30.0)] * 10, "val")
    assert profile["objects"]["counts"] == s["objects"] and profile["predicted_class"]["classes"][-1] == "(no object)"


def test_localisation_on_a_device_returns_the_rectified_crop():
    task = get_task("document-localisation")
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[30:90, 40:120] = 200
    raw = np.array([[40 / 160, 30 / 120, 120 / 160, 30 / 120, 120 / 160, 90 / 120, 40 / 160, 90 / 120]], np.float32)
    result, outcome = task.device_output(raw, frame, ["id-card"])
    assert result["crop"].shape == (270, 428, 3) and result["crop"][20:-20, 20:-20].min() == 200
    assert outcome["objects"] == 1 and outcome["box_areas"][0] == pytest.approx(0.25, rel=1e-3)


def test_detection_refuses_a_dataset_without_boxes(synth_ds, tmp_path):
    from tests.conftest import write_train_config

    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "m", model__task="detection")
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 2 and not (tmp_path / "m").exists()
    assert "no boxes" in result.output


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="session")
def detector(tmp_path_factory, frames_ds):
    """A tiny detector (tiny-cnn backbone, 64x80 input, 2 epochs) trained through the CLI."""
    from tests.conftest import write_train_config

    tmp = tmp_path_factory.mktemp("detector")
    cfg = write_train_config(tmp / "t.yaml", frames_ds / "dataset.json", tmp / "model", model__task="detection",
                             model__image_size=[64, 80], train__epochs=2, tracking__log_model=False)  # fmt: skip
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    return tmp / "model", result.output


@pytest.fixture(scope="session")
def detector_bundles(tmp_path_factory, detector, frames_ds, keypair, loose_targets):
    """The tiny detector built for every registered runtime's profile: (build output, bundles folder)."""
    from tests.conftest import build_args

    out = tmp_path_factory.mktemp("det-bundles")
    args = build_args(detector[0], "cpu", keypair, loose_targets, out, "--data", str(frames_ds), "--no-track")
    for target in sorted(set(TARGET_OF.values()) - {"cpu"}):
        args += ["--target", target]
    result = invoke(*args, "--version", "1.0.0")
    assert result.exit_code == 0, result.output
    return result.output, out


@pytest.mark.slow
def test_a_detector_trains_and_builds_for_every_runtime_judged_by_map(detector, detector_bundles):
    import torch

    from factory.train.canonical import load_canonical, onnx_logits

    path, output = detector
    assert "mAP@0.5" in output
    model = load_canonical(path)
    card = model.card
    assert card["task"] == "detection" and card["output"]["grid"] == [16, 20] and card["output"]["classes"] == 3
    assert "objects" in card["reference_profile"] and "box_area" in card["reference_profile"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 80)).astype(np.float32)
    with torch.no_grad():
        out = model.build_module()(torch.from_numpy(x)).numpy()
    assert out.shape == (2, 7 * 16 * 20) and np.abs(out - onnx_logits(model.onnx, x)).max() < 1e-4
    build_output, bundles = detector_bundles
    assert "| mAP@0.5 | drop pt [95% interval] |" in build_output  # the table speaks the task's metric
    targets = sorted(TARGET_OF.values())
    rows = [line for line in build_output.splitlines() if line.startswith(tuple(f"| {t} |" for t in targets))]
    assert len(rows) == len(targets)
    for target in targets:
        manifest = json.loads(next(bundles.glob(f"*/*/{target}/manifest.json")).read_text())
        v = manifest["validation"]
        assert v["task"] == "detection" and manifest["output"]["grid"] == [16, 20]
        check = next(c for c in v["checks"] if c["check"] == "map50_drop")
        assert check["interval"][0] <= check["value"] <= check["interval"][1]
        assert manifest["latency"]["postprocess_p50_ms"] > 0
        if manifest["recipe"]["precision"] == "fp32":
            assert abs(v["parity"]["map50_drop_pt"]) < 0.5 and v["parity"]["max_abs_diff"] < 1e-3, (target, v["parity"])


@pytest.mark.slow
def test_a_detection_bundle_goes_through_rollout_devices_telemetry_and_health(detector_bundles, frames_ds, keypair,
                                                                               tmp_path):  # fmt: skip
    """publish -> staged rollout -> simulated devices running the real bundle -> per-task telemetry -> health."""
    import httpx
    import sqlalchemy as sa

    from factory.bundle.signing import load_private_key, load_public_key
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient
    from factory.device.simulate import Fleet, Knobs, load_images
    from factory.pipeline.fleet_demo import _retag as retag
    from factory.registry import db
    from tests.registry_server import start_registry

    base = next(detector_bundles[1].glob("*/1.0.0/cpu"))
    model = json.loads((base / "manifest.json").read_text())["name"]
    retag(base, tmp_path / "1.1.0", "1.1.0", load_private_key(keypair[0]), "test re-release")
    srv, settings, engine, admin, tokens = start_registry(
        tmp_path, keypair[1], {"window_seconds": 2, "evaluate_seconds": 0.0}, devices=("cam-1",)
    )
    device_token = tokens["cam-1"]
    try:
        client = RegistryClient(srv.url, admin)
        for folder in (base, tmp_path / "1.1.0"):
            client.publish(folder)
        client.create_rollout(
            {"name": "base", "release": {"name": model, "version": "1.0.0"}, "stages": [{"percent": 100}]}
        )
        client.act("base", "advance", "first release")
        # one real agent: it pulls the detection bundle and returns boxes in the frame's pixels
        agent = Agent(
            RegistryClient(srv.url, device_token), model=model, device_id="cam-1", target="cpu", tags=[],
            state_dir=tmp_path / "cam-1", bundle_key=load_public_key(keypair[1]), window_seconds=2,
        )  # fmt: skip
        assert agent.sync().startswith("switched")
        frame = load_images(str(frames_ds))[0]
        found = agent.infer(frame)
        assert isinstance(found, list) and all({"label", "score", "box"} <= set(d) for d in found)
        assert all(0 <= d["box"][0] <= d["box"][2] <= frame.shape[1] for d in found)
        agent.close_window()
        assert agent.upload()["sent"] == 1
        # a simulated fleet takes 1.1.0 through its stages on health, with per-task telemetry
        health = {"min_inferences": 40, "windows_to_halt": 2, "max_psi": 50.0, "max_js": 1.0}
        stages = [{"percent": 50, "min_devices_reporting": 3}, {"percent": 100}]
        fleet = Fleet(client, model=model, devices=12, targets=["cpu"], knobs=Knobs(latency_model_ms=0.5),
                      images=load_images(str(frames_ds)), cache=tmp_path / "cache", window_seconds=2)  # fmt: skip
        client.create_rollout({"name": "det", "release": {"name": model, "version": "1.1.0"}, "stages": stages,
                               "health": health})  # fmt: skip
        for _ in range(8):
            fleet.simulate(1, inferences=30)
            if client.rollout("det")["status"] == "completed":
                break
        assert client.rollout("det")["status"] == "completed"
        with engine.connect() as conn:
            stored = [json.loads(r[0]) for r in conn.execute(sa.select(db.telemetry.c.summary)).all()]
        assert stored and all("objects" in s and "box_area" in s for s in stored)
        assert all(len(s["predicted_class"]) == 4 for s in stored)  # 3 classes and "(no object)"
        report = httpx.get(srv.url + "/v1/health", headers={"Authorization": f"Bearer {admin}"}).json()
        windows = next(r for r in report["rollouts"] if r["name"] == "det")["targets"]["cpu"]["windows"]
        assert any("psi_objects" in w["drift"] and "psi_box_area" in w["drift"] for w in windows), windows[-1]
        client.close()
    finally:
        srv.stop()


@pytest.mark.slow
def test_bench_and_gate_judge_a_detector_by_map_with_post_processing_timed(detector, detector_bundles, tmp_path):
    bundle = next(detector_bundles[1].glob("*/1.0.0/cpu"))
    r = invoke("bench", str(detector[0]), str(bundle), "--seconds", "2", "--out", str(tmp_path / "rep"),
               "--save-baseline", str(tmp_path / "base"))  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {row["kind"]: row for row in report["artifacts"]}
    for row in rows.values():
        acc = row["accuracy"]
        assert acc["task"] == "detection" and 0 <= acc["map50"] <= 1 and acc["matches"]["frames"] == acc["n"]
        assert row["latency"]["postprocess_p50_ms"] > 0
        assert row["latency"]["end_to_end_p50_ms"] > row["latency"]["p50_ms"]
    vs = rows["bundle"]["accuracy"]["vs_canonical"]
    assert (
        abs(vs["map50_drop_pt"]) < 0.5 and vs["drop_interval_pt"][0] <= vs["map50_drop_pt"] <= vs["drop_interval_pt"][1]
    )
    assert rows["bundle"]["speedup_vs_pytorch_eager_end_to_end"] > 0
    assert "mAP@0.5" in (tmp_path / "rep" / "report.md").read_text()
    policy = tmp_path / "gates.yaml"
    policy.write_text(Path("configs/gates.yaml").read_text())
    g = invoke("gate", "--candidate", str(tmp_path / "rep"), "--baseline", str(tmp_path / "base"), "--policy",
               str(policy))  # fmt: skip
    accuracy = [line for line in g.output.splitlines() if "mAP@0.5" in line]
    assert accuracy and all("drop +0.00 pt" in line and "verdict pass" in line for line in accuracy), (
        g.output,
        g.exception,
    )


@pytest.mark.slow
def test_search_ranks_detection_candidates_by_map_loss(detector, frames_ds, keypair, loose_targets, tmp_path):
    import yaml

    profile = yaml.safe_load((loose_targets / "cpu.yaml").read_text())
    profile["search"] = {"objective": "p50_latency", "space": {"recipe.precision": ["fp32", "int8-static"]},
                         "bench_seconds": 1, "budget_minutes": 10}  # fmt: skip
    profile["budgets"]["max_map_drop_pt"] = 100.0
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "edge.yaml").write_text(yaml.safe_dump(profile))
    r = invoke("build", "--search", "--target", "edge", "--model", str(detector[0]), "--key", str(keypair[0]),
               "--targets-dir", str(tmp_path / "t"), "--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "c"),
               "--search-dir", str(tmp_path / "s"), "--data", str(frames_ds), "--no-track")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s" / "edge" / "search.json").read_text())
    rows = [row for row in summary["candidates"] if row.get("p50_ms") is not None]
    assert len(rows) == 2 and all(row["quality_name"] == "mAP@0.5" and row["top1"] is None for row in rows)
    assert all(row["accuracy_verdict"] == "pass" for row in rows)
    assert "mAP@0.5 drop" in summary["verdict"] and "mAP@0.5" in (tmp_path / "s" / "edge" / "search.md").read_text()
