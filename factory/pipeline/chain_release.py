"""A pipeline release made: the chain validated end to end, then one signed bundle holding both members.

The release's layout and its verification are ``factory.bundle.pipeline``'s; running it is
``factory.device.chain``'s.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._io import sha256_file
from ..bundle.pipeline import STAGES, member_archive
from ..device.chain import Chain, Stage, check_stages, crop_size, run_chain
from ..errors import ConfigError

__all__ = ["validate_chain", "field_profile", "chain_latency", "assemble_release"]


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
    sizes = Counter((int(f.shape[0]), int(f.shape[1])) for f in frames)
    return {
        "n": len(y),
        "dataset_hash": manifest.dataset_hash,
        "frame_size": list(sizes.most_common(1)[0][0]),  # (height, width) a benchmark feeds the chain
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
        # frame by frame, in path order: what `factory pipeline gate` pairs two releases on
        "frames_correct": "".join("1" if c else "0" for c in cc),
        "frames_corner_error_pct": [round(float(e), 3) for e in corner_errors(cand["corners"], targets)],
    }


def field_profile(data, stages: tuple[Stage, Stage], split: str = "val") -> dict:
    """What devices should see: the ``stages``' outcomes on the held-out ``split`` frames, counted as a
    device counts them. Given the canonical pair, it is a release's reference profile (as a single
    bundle's is its canonical model's): a member whose conversion went wrong shows as drift."""
    from ..data.manifest import load_manifest
    from ..data.splits import read_images
    from ..stats import image_stats
    from ..tasks.base import outcome_profile

    manifest = load_manifest(data)
    records = sorted(manifest.subset(split), key=lambda r: r.path) or sorted(manifest.files, key=lambda r: r.path)
    frames = read_images(manifest, records)
    chain = Chain(None, *stages)
    return outcome_profile(chain.outcomes(frames), chain.labels, [image_stats(f) for f in frames], split)


def chain_latency(data, stages: tuple[Stage, Stage], frames: int = 20, rounds: int = 5) -> dict:
    """End-to-end p50/p95 of one frame through the chain in this process (indicative: `factory bench` on
    the release measures it in a worker process of its own)."""
    from ..data.manifest import load_manifest
    from ..data.splits import read_images
    from ..lineage import host_info

    manifest = load_manifest(data)
    images = read_images(manifest, sorted(manifest.subset("test"), key=lambda r: r.path)[:frames])
    chain = Chain(None, *stages)
    chain.infer(images[0])
    times = []
    for _ in range(rounds):
        for im in images:
            t0 = time.perf_counter()
            chain.infer(im)
            times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 4),
        "p95_ms": round(float(np.percentile(times, 95)), 4),
        "runs": len(times),
        "how": "one frame at a time through both stages in the build process (indicative; `factory bench` isolates)",
        "host": host_info(),
    }


def _member(folder: Path, archive: Path) -> dict:
    from ..bundle.manifest import Manifest

    m = Manifest.read(folder)
    return {
        "name": m.name,
        "version": m.version,
        "target": m.target,
        "task": m.validation.get("task", "classification"),
        "backend": m.runtime["backend"],
        "precision": m.recipe["precision"],
        "manifest_sha256": sha256_file(folder / "manifest.json"),
        "archive": archive.name,
        "archive_sha256": sha256_file(archive),
    }


def _check_same_members(dest: Path, stages: list[dict], config: dict, target: str) -> None:
    """A rebuild of the same members may replace a release; other members under its version may not."""
    from ..bundle.manifest import Manifest
    from ..errors import BundleError

    try:
        old = Manifest.read(dest).extra.get("pipeline", {}).get("stages", [])
    except BundleError:
        return
    before = [(m["name"], m["version"], m["target"]) for m in old]
    after = [(m["name"], m["version"], m["target"]) for m in stages]
    if before != after:
        raise ConfigError(
            f"pipeline {config['name']} {config['version']} for {target} already names other stage bundles "
            f"({before}); a changed stage is a new pipeline version",
            hint="raise version: in the pipeline YAML",
        )


def assemble_release(
    config: dict,
    target: str,
    bundles: dict[str, Path],
    validation: dict,
    key,
    out_root: str | Path,
    *,
    profile: dict,
    latency: dict,
) -> Path:
    """Pack both member bundles into one signed pipeline bundle at OUT/<name>/<version>/<target>; written
    whole or not at all."""
    from .._io import atomic_dir
    from ..bundle.archive import pack
    from ..bundle.manifest import Manifest, bundle_dir, file_entries
    from ..bundle.signing import key_id

    dest = bundle_dir(Path(out_root), config["name"], config["version"], target)
    members = {s: Manifest.read(Path(bundles[s])) for s in STAGES}
    loc, cls = members["localise"], members["classify"]  # the crop's size is the classifier's input size
    with tempfile.TemporaryDirectory(prefix=".pipeline-") as work:
        archives = {s: pack(Path(bundles[s]), Path(work) / member_archive(s)) for s in STAGES}
        stages = [{"stage": s, **_member(Path(bundles[s]), archives[s])} for s in STAGES]
        _check_same_members(dest, stages, config, target)
        precisions = sorted({m["precision"] for m in stages})
        check = {
            "check": "end_to_end_top1",
            "value": validation["top1_end_to_end"],
            "limit": f"drop <= {config['accuracy']['max_drop_pt']:g} pt",
            "passed": bool(validation["passed"]),
            "verdict": validation["verdict"],
            "why": validation["why"],
        }
        manifest = Manifest(
            name=config["name"],
            version=config["version"],
            target=target,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            runtime={"backend": "pipeline", "package": loc.runtime["package"],
                     "min_version": loc.runtime["min_version"], "options": {},
                     "built_with": loc.runtime.get("built_with"),
                     "stages": {m["stage"]: m["backend"] for m in stages}},
            artifact={"main": member_archive("localise"), "precision": "+".join(precisions),
                      "size_bytes": sum(a.stat().st_size for a in archives.values())},
            files={},
            input={"shape": [1, "H", "W", 3], "dtype": "uint8", "layout": "NHWC", "color_order": "BGR",
                   "what": "one camera frame of any size; the localiser resizes it, the crop comes from it whole"},
            output={"kind": "pipeline", "result": "corners (4 x 2 pixels), label, confidence"},
            preprocessing=dict(loc.preprocessing),
            labels=list(cls.labels),
            recipe={"precision": "+".join(precisions), "pruning": {},
                    "stages": {s: members[s].recipe for s in STAGES}},
            validation={"passed": bool(validation["passed"]), "parity": {}, "budgets": dict(config["accuracy"]),
                        "checks": [check], "dataset_hash": validation["dataset_hash"], "end_to_end": validation},
            latency=latency,
            lineage={"members": {m["stage"]: {k: m[k] for k in ("name", "version", "target", "manifest_sha256")}
                                 for m in stages}},
            reference_profile=profile,
        )  # fmt: skip
        manifest.extra["pipeline"] = {
            "stages": stages,
            "glue": {
                "localise": "corners TL, TR, BR, BL as fractions of the frame (the localiser's output)",
                "rectify": {"size": list(crop_size(cls.preprocessing)), "interpolation": "linear"},
                "classify": "the rectified crop, preprocessed as the classifier's manifest says",
            },
            "frame_size": validation["frame_size"],
            "signer": key_id(key.public_key()),
        }
        with atomic_dir(dest) as tmp:
            for s in STAGES:
                archives[s].rename(tmp / member_archive(s))
            manifest.files = file_entries(tmp, [member_archive(s) for s in STAGES])
            manifest.write_signed(tmp, key)
    return dest
