import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from factory.data.cvat import read_cvat
from factory.data.documents import document_types
from factory.data.manifest import Record, build_manifest, load_manifest, split_of
from factory.data.synth import synthesize
from factory.errors import DataError
from tests.conftest import invoke


def test_at_least_six_distinct_document_types():
    assert len(document_types()) >= 6


def test_synth_same_seed_same_bytes(tmp_path, synth_ds):
    again = tmp_path / "again"
    synthesize(again, seed=3, per_class=14, size=(96, 72))
    assert load_manifest(again).dataset_hash == load_manifest(synth_ds).dataset_hash
    for f in sorted((synth_ds / "images").rglob("*.jpg"))[:20]:
        assert f.read_bytes() == (again / f.relative_to(synth_ds)).read_bytes()
    assert (synth_ds / "annotations.xml").read_bytes() == (again / "annotations.xml").read_bytes()


def test_synth_other_seed_other_data(tmp_path, synth_ds):
    other = synthesize(tmp_path / "other", seed=4, per_class=14, size=(96, 72))
    assert other.dataset_hash != load_manifest(synth_ds).dataset_hash


def test_synth_writes_cvat_with_types_and_quads(synth_ds):
    labels, images = read_cvat(synth_ds / "annotations.xml")
    manifest = load_manifest(synth_ds)
    assert labels == manifest.classes
    assert len(images) == len(manifest.files)
    by_name = {im.name: im for im in images}
    for rec in manifest.files:
        im = by_name[rec.path]
        assert im.label == rec.label
        assert len(im.quad) == 4
        quad = np.asarray(im.quad)
        # the document is mostly inside the frame and not degenerate
        assert cv2.contourArea(quad.astype(np.float32)) > 0.15 * rec.width * rec.height


def test_manifest_lists_every_file_with_its_hash(synth_ds):
    from factory._io import sha256_file

    manifest = load_manifest(synth_ds)
    for rec in manifest.files[:30]:
        assert sha256_file(manifest.resolve(rec)) == rec.sha256
    assert {r.split for r in manifest.files} == {"train", "val", "test"}


def test_split_by_hash_is_stable_when_files_are_added():
    recs = [
        Record(path=f"{i}.jpg", sha256=f"{i:064x}", label="a" if i % 2 else "b", width=1, height=1) for i in range(400)
    ]
    small = build_manifest("x", [Record(**vars(r)) for r in recs[:200]], ["a", "b"])
    big = build_manifest("x", [Record(**vars(r)) for r in recs], ["a", "b"])
    before = {r.path: r.split for r in small.files}
    assert all(before[r.path] == r.split for r in big.files if r.path in before)
    share = sum(r.split == "train" for r in big.files) / len(big.files)
    assert 0.5 < share < 0.7


def test_groups_share_a_split():
    assert len({split_of("clip-7", {"train": 0.6, "val": 0.2, "test": 0.2}) for _ in range(3)}) == 1
    recs = [
        Record(path=f"{i}.jpg", sha256=f"{i:064x}", label="a", width=1, height=1, group=f"g{i // 10}")
        for i in range(100)
    ]
    m = build_manifest("x", recs, ["a"])
    for g in {r.group for r in m.files}:
        assert len({r.split for r in m.files if r.group == g}) == 1


def _imagefolder(root: Path, classes=("alpha", "beta"), n=4) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            img = np.full((40, 50, 3), 40 * i + (100 if c == "beta" else 0), np.uint8)
            cv2.imwrite(str(root / c / f"{i}.png"), img)
    return root


def test_import_imagefolder(tmp_path):
    src = _imagefolder(tmp_path / "src")
    result = invoke("data", "import", "imagefolder", str(src), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "ds")
    assert m.classes == ["alpha", "beta"]
    assert len(m.files) == 8
    assert all((tmp_path / "ds" / r.path).is_file() for r in m.files)


def test_import_corrupt_image_names_the_file_and_writes_nothing(tmp_path):
    src = _imagefolder(tmp_path / "src")
    (src / "beta" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = invoke("data", "import", "imagefolder", str(src), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 2
    assert "broken.jpg" in result.stderr
    assert not (tmp_path / "ds").exists()
    assert not any(p.name.startswith(".ds") for p in tmp_path.iterdir())


def test_import_empty_class_is_an_error(tmp_path):
    src = _imagefolder(tmp_path / "src")
    (src / "gamma").mkdir()
    result = invoke("data", "import", "imagefolder", str(src), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 2
    assert "class 'gamma' has no images" in result.stderr
    assert not (tmp_path / "ds").exists()


def test_import_label_not_in_class_list(tmp_path):
    src = _imagefolder(tmp_path / "src")
    result = invoke("data", "import", "imagefolder", str(src), "--out", str(tmp_path / "ds"), "--classes", "alpha")
    assert result.exit_code == 2
    assert "label 'beta' is not in the class list" in result.stderr
    assert not (tmp_path / "ds").exists()


def test_import_cvat_round_trip(tmp_path, synth_ds):
    result = invoke(
        "data",
        "import",
        "cvat",
        str(synth_ds),
        "--annotations",
        str(synth_ds / "annotations.xml"),
        "--out",
        str(tmp_path / "ds"),
    )
    assert result.exit_code == 0, result.output
    a, b = load_manifest(synth_ds), load_manifest(tmp_path / "ds")
    assert a.classes == b.classes
    assert sorted((r.sha256, r.label) for r in a.files) == sorted((r.sha256, r.label) for r in b.files)
    assert all(r.quad is not None for r in b.files)


def test_import_truncated_cvat(tmp_path, synth_ds):
    xml = (synth_ds / "annotations.xml").read_bytes()
    bad = tmp_path / "truncated.xml"
    bad.write_bytes(xml[: len(xml) // 2])
    result = invoke("data", "import", "cvat", str(synth_ds), "--annotations", str(bad), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 2
    assert "truncated.xml" in result.stderr and "malformed CVAT XML" in result.stderr
    assert not (tmp_path / "ds").exists()


def test_import_cvat_label_not_declared(tmp_path, synth_ds):
    tree = ET.parse(synth_ds / "annotations.xml")
    tree.getroot().find("image").find("tag").set("label", "library-card")
    bad = tmp_path / "bad-label.xml"
    tree.write(bad)
    result = invoke("data", "import", "cvat", str(synth_ds), "--annotations", str(bad), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 2
    assert "'library-card' is not in the class list" in result.stderr


def test_import_cvat_bad_points(tmp_path, synth_ds):
    tree = ET.parse(synth_ds / "annotations.xml")
    tree.getroot().find("image").find("polygon").set("points", "1,2;3,4")
    bad = tmp_path / "bad-points.xml"
    tree.write(bad)
    result = invoke("data", "import", "cvat", str(synth_ds), "--annotations", str(bad), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 2
    assert "exactly 4 points" in result.stderr


def _midv(root: Path) -> Path:
    for doc in ("01_alb_id", "02_aut_drvlic_new"):
        for cond in ("CA", "TS"):
            (root / doc / "images" / cond).mkdir(parents=True)
            (root / doc / "ground_truth" / cond).mkdir(parents=True)
            for f in range(3):
                name = f"{cond}{doc[:2]}_{f + 1:02d}"
                cv2.imwrite(
                    str(root / doc / "images" / cond / f"{name}.tif"), np.full((60, 40, 3), 30 * f + len(doc), np.uint8)
                )
                (root / doc / "ground_truth" / cond / f"{name}.json").write_text(
                    json.dumps({"quad": [[1, 2], [30, 2], [30, 50], [1, 50]]})
                )
        cv2.imwrite(
            str(root / doc / "images" / f"{doc}.tif"), np.zeros((10, 10, 3), np.uint8)
        )  # template scan: skipped
    return root


def test_import_midv500_layout(tmp_path):
    src = _midv(tmp_path / "midv")
    result = invoke("data", "import", "midv500", str(src), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "ds")
    assert m.classes == ["alb_id", "aut_drvlic_new"]
    assert len(m.files) == 12  # templates skipped
    assert all(r.quad == [[1, 2], [30, 2], [30, 50], [1, 50]] for r in m.files)
    for g in {r.group for r in m.files}:
        assert len({r.split for r in m.files if r.group == g}) == 1


def test_report_writes_profile_and_pictures(tmp_path, synth_ds):
    result = invoke("data", "report", str(synth_ds), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    profile = json.loads((tmp_path / "rep" / "profile.json").read_text())
    m = load_manifest(synth_ds)
    assert profile["dataset_hash"] == m.dataset_hash
    assert profile["class_counts"]["total"] == {c: 14 for c in m.classes}
    assert sum(profile["reference_histograms"]["brightness"]["counts"]) == len(m.files)
    assert 0 < profile["brightness"]["mean"] < 255
    for png in ("class_balance.png", "samples.png"):
        img = cv2.imread(str(tmp_path / "rep" / png))
        assert img is not None and img.shape[0] > 100


def test_report_finds_duplicates(tmp_path):
    src = _imagefolder(tmp_path / "src")
    shutil.copy(src / "alpha" / "0.png", src / "alpha" / "copy.png")
    shutil.copy(src / "alpha" / "1.png", src / "beta" / "mislabelled.png")
    assert invoke("data", "import", "imagefolder", str(src), "--out", str(tmp_path / "ds")).exit_code == 0
    result = invoke("data", "report", str(tmp_path / "ds"), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    dup = json.loads((tmp_path / "rep" / "profile.json").read_text())["duplicates"]
    assert dup["groups"] == 2 and dup["extra_copies"] == 2
    assert len(dup["conflicting_labels"]) == 1


def test_tampered_manifest_is_refused(tmp_path, synth_ds):
    shutil.copytree(synth_ds, tmp_path / "ds")
    path = tmp_path / "ds" / "dataset.json"
    raw = json.loads(path.read_text())
    raw["files"][0]["label"] = raw["classes"][1] if raw["files"][0]["label"] == raw["classes"][0] else raw["classes"][0]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="dataset_hash does not match"):
        load_manifest(tmp_path / "ds")
