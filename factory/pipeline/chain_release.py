"""A pipeline release made: the chain validated end to end, then both bundles in one signed folder.

The folder's layout and its verification are ``factory.bundle.pipeline``'s; running it is
``factory.device.chain``'s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._io import sha256_file
from ..bundle.pipeline import PIPELINE, PIPELINE_SIG, STAGES
from ..device.chain import Stage, check_stages, crop_size, run_chain
from ..errors import ConfigError

__all__ = ["validate_chain", "assemble_release"]


def validate_chain(data, reference: tuple[Stage, Stage], candidate: tuple[Stage, Stage], accuracy: dict) -> dict:
    """End-to-end top-1 of ``candidate`` on the test frames, against ``reference`` by the paired rule."""
    from ..data.manifest import load_manifest
    from ..data.splits import read_images
    from ..errors import DataError
    from ..proportions import non_inferiority
    from ..tasks.localisation import DocumentLocalisation, corner_errors

    for pair in (reference, candidate):
        check_stages(*pair)
    manifest = load_manifest(data)
    records = sorted(manifest.subset("test"), key=lambda r: r.path)
    labels = candidate[1].labels
    unknown = sorted({r.label for r in records} - set(labels))
    if not records or unknown:
        what = f"labels {unknown} are not the classifier's" if unknown else "no test frames"
        raise DataError(
            f"dataset {manifest.name!r}: {what}",
            hint="validate the chain on the frames dataset both stages were made for",
        )
    frames = read_images(manifest, records)
    targets = DocumentLocalisation().targets(records, labels)
    y = np.array([labels.index(r.label) for r in records])
    ref, cand = run_chain(frames, *reference), run_chain(frames, *candidate)
    true_crops = run_chain(frames, *candidate, corners=targets[:, :8])
    rc, cc = ref["pred"] == y, cand["pred"] == y
    rule = non_inferiority(
        int((rc & ~cc).sum()), int((~rc & cc).sum()), len(y), accuracy["max_drop_pt"], accuracy["confidence"]
    )
    verdict = rule["verdict"]
    passed = verdict == "pass" or (verdict == "inconclusive" and accuracy["inconclusive"] in ("warn", "pass"))
    return {
        "n": len(y),
        "dataset_hash": manifest.dataset_hash,
        "top1_end_to_end": float(cc.mean()),
        "canonical_top1_end_to_end": float(rc.mean()),
        "top1_on_true_crops": float((true_crops["pred"] == y).mean()),
        "agreement_with_canonical": float((ref["pred"] == cand["pred"]).mean()),
        "corner_error_pct": float(corner_errors(cand["corners"], targets).mean()),
        "canonical_corner_error_pct": float(corner_errors(ref["corners"], targets).mean()),
        "drop_pt": rule["drop_pt"],
        "interval_pt": rule["interval_pt"],
        "verdict": verdict,
        "why": rule["why"],
        "rule": rule["rule"],
        "margin_pt": accuracy["max_drop_pt"],
        "passed": passed,
    }


def _member(folder: Path) -> dict:
    from ..bundle.manifest import Manifest

    m = Manifest.read(folder)
    sha = sha256_file(folder / "manifest.json")
    return {"name": m.name, "version": m.version, "target": m.target, "manifest_sha256": sha}


def assemble_release(
    config: dict, target: str, bundles: dict[str, Path], validation: dict, key, out_root: str | Path
) -> Path:
    """Copy both bundles into one folder with a signed pipeline.json; written whole or not at all."""
    from ..bundle.manifest import Manifest
    from ..bundle.signing import key_id, sign

    dest = Path(out_root) / config["name"] / config["version"] / target
    dest.parent.mkdir(parents=True, exist_ok=True)
    classify = Manifest.read(Path(bundles["classify"]))  # its input size is the crop's; nothing is loaded
    doc = {
        "schema_version": 1,
        "kind": "pipeline",
        "name": config["name"],
        "version": config["version"],
        "target": target,
        "stages": [{"stage": s, "folder": s, **_member(Path(bundles[s]))} for s in STAGES],
        "glue": {
            "localise": "corners TL, TR, BR, BL as fractions of the frame (the localiser's output)",
            "rectify": {"size": list(crop_size(classify.preprocessing)), "interpolation": "linear"},
            "classify": "the rectified crop, preprocessed as the classifier's manifest says",
        },
        "validation": validation,
        "signer": key_id(key.public_key()),
    }
    if (dest / PIPELINE).is_file():  # a rebuild of the same members may replace it; other members may not
        old = [(m["name"], m["version"], m["target"]) for m in json.loads((dest / PIPELINE).read_bytes())["stages"]]
        new = [(m["name"], m["version"], m["target"]) for m in doc["stages"]]
        if old != new:
            raise ConfigError(
                f"pipeline {config['name']} {config['version']} for {target} already names other stage bundles "
                f"({old}); a changed stage is a new pipeline version",
                hint="raise version: in the pipeline YAML",
            )
    with tempfile.TemporaryDirectory(prefix=".pipeline-", dir=dest.parent) as tmp:
        stage = Path(tmp) / "release"
        stage.mkdir()
        for s in STAGES:
            shutil.copytree(bundles[s], stage / s)
        raw = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        (stage / PIPELINE).write_bytes(raw)
        (stage / PIPELINE_SIG).write_bytes(sign(raw, key))
        if dest.exists():
            shutil.rmtree(dest)
        stage.rename(dest)
    return dest
