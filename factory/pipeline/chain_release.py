"""A pipeline release: the chain's two stage bundles in one signed folder, validated end to end.

    OUT/<pipeline>/<version>/<target>/
      pipeline.json   name, version, target, each stage's bundle (name, version, target, sha256 of its
                      signed manifest), the glue (rectify to the classifier's input size) and the
                      end-to-end validation on the test frames against the canonical pair
      pipeline.sig    Ed25519 signature of pipeline.json (the same key as the bundles')
      localise/       the localiser's bundle, as built
      classify/       the classifier's bundle, as built

A member is trusted only through the pipeline: its own signature must verify and its manifest's
sha256 must be the one the signed pipeline names, so a member swapped for another signed bundle, or
tampered with, refuses the whole release.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._io import sha256_file
from ..errors import BundleError, ConfigError
from .chain import Stage, bundle_stage, check_stages, crop_size, run_chain

__all__ = ["STAGES", "validate_chain", "assemble_release", "verify_release", "open_release"]

STAGES = ("localise", "classify")
PIPELINE, PIPELINE_SIG = "pipeline.json", "pipeline.sig"


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
    from ..bundle.signing import key_id, sign

    dest = Path(out_root) / config["name"] / config["version"] / target
    dest.parent.mkdir(parents=True, exist_ok=True)
    classify = bundle_stage(bundles["classify"], key.public_key())
    doc = {
        "schema_version": 1,
        "kind": "pipeline",
        "name": config["name"],
        "version": config["version"],
        "target": target,
        "stages": [{"stage": s, "folder": s, **_member(Path(bundles[s]))} for s in STAGES],
        "glue": {
            "localise": "corners TL, TR, BR, BL as fractions of the frame (the localiser's output)",
            "rectify": {"size": list(crop_size(classify)), "interpolation": "linear"},
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


def verify_release(folder: str | Path, public_key) -> dict:
    """The signed pipeline.json, after every member verified and matched; BundleError otherwise."""
    from ..bundle.archive import verify_bundle
    from ..bundle.signing import verify_signature

    folder = Path(folder)
    raw = (folder / PIPELINE).read_bytes() if (folder / PIPELINE).is_file() else b""
    if not raw or not (folder / PIPELINE_SIG).is_file():
        raise BundleError(f"{folder} is not a pipeline release (no {PIPELINE} and {PIPELINE_SIG})")
    verify_signature(raw, (folder / PIPELINE_SIG).read_bytes(), public_key)
    doc = json.loads(raw)
    problems = []
    named = {s["stage"]: s for s in doc.get("stages", [])}
    if set(named) != set(STAGES):
        problems.append(f"stages {sorted(named)}, expected {list(STAGES)}")
    for s in STAGES:
        member = folder / s
        if s not in named or not member.is_dir():
            problems.append(f"{s}: missing")
            continue
        try:
            verify_bundle(member, public_key)
        except BundleError as exc:
            problems.append(f"{s}: {exc}")
            continue
        if sha256_file(member / "manifest.json") != named[s]["manifest_sha256"]:
            problems.append(f"{s}: its manifest is not the one the signed pipeline names (swapped)")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in (PIPELINE, PIPELINE_SIG, *STAGES))
    problems += [f"{name}: not part of the release" for name in extra]
    if problems:
        raise BundleError(f"pipeline release {folder} failed verification:\n  - " + "\n  - ".join(problems))
    return doc


def open_release(folder: str | Path, public_key) -> tuple[dict, Stage, Stage]:
    """A verified release's document and its two stages, ready for :func:`factory.pipeline.chain.run_chain`."""
    doc = verify_release(folder, public_key)
    localise, classify = (bundle_stage(Path(folder) / s, public_key) for s in STAGES)
    check_stages(localise, classify)
    return doc, localise, classify
