"""Accuracy of each artifact on the test split, against the canonical model, image by image."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from .. import progress
from ..data.manifest import load_manifest
from ..data.splits import load_split
from ..errors import DataError
from ..proportions import tango_interval, wilson_interval
from .stats import mcnemar_p

__all__ = ["measure_accuracy", "pack_bits", "unpack_bits"]


def pack_bits(correct: np.ndarray) -> str:
    """Per-image correctness as base64 bits (compact enough for a report)."""
    return base64.b64encode(np.packbits(np.asarray(correct, bool)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The inverse of :func:`pack_bits` for ``n`` images."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n].astype(bool)


def _dataset_for(artifact, explicit: str | None):
    if explicit:
        return load_manifest(explicit)
    if not artifact.canonical_path:
        return None
    from ..train.canonical import load_canonical

    try:
        card = load_canonical(artifact.canonical_path, verify=False).card
    except Exception:
        return None
    path = card["lineage"].get("dataset_manifest")
    return load_manifest(path) if path and Path(path).exists() else None


def _task_accuracy(a, manifest, cache: dict, batch: int) -> dict:
    """A model of another task than classification: its task's metrics on the test split and, against the
    canonical model, its task's parity (e.g. the mAP@0.5 drop with a paired bootstrap interval)."""
    from ..data.splits import load_split_images
    from ..tasks import get_task
    from ..train.canonical import load_canonical, onnx_logits

    task = get_task(a.task, a.output)
    key = ("task", str(manifest.location), a.canonical_path)
    if key not in cache:
        progress.info(f"accuracy: loading the test split of {manifest.name}")
        x, records = load_split_images(manifest, "test", a.preprocessing)
        ref = onnx_logits(load_canonical(a.canonical_path).onnx, x) if a.canonical_path else None
        cache[key] = (x, task.targets(records, a.labels), ref)
    x, y, ref = cache[key]
    raw = np.concatenate([a.runner(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])
    a.extra["raw_sample"] = raw[:200]  # real outputs, for timing the post-processing after the latency run
    row = {"task": task.name, "dataset_hash": manifest.dataset_hash, **task.metrics(raw, y)}
    if hasattr(task, "match_table"):
        row["matches"] = task.match_table(raw, y)  # for the gate: two reports paired frame by frame
    if ref is not None:
        row["vs_canonical"] = task.parity(raw, ref, y)
    return row


def _pipeline_accuracy(a) -> dict:
    """A pipeline release's end-to-end figures frame by frame, as its signed manifest records them from the
    build's validation on the test frames (the chain needs the frames' labels and corners, which a
    classification test split does not have): what `factory gate` pairs, end to end and per stage."""
    v = a.extra.get("end_to_end")
    if not v:
        return {"skipped": "the canonical pair is the yardstick of the releases' end-to-end validation"}
    correct = np.array([c == "1" for c in v["frames_correct"]])
    return {
        "n": v["n"],
        "dataset_hash": v["dataset_hash"],
        "top1": float(correct.mean()),
        "correct_bits": pack_bits(correct),
        "source": "the release's end-to-end validation at build time (its signed manifest)",
        "stages": {
            "localise": {
                "corner_error_pct": float(np.mean(v["frames_corner_error_pct"])),
                "matches": {"frames": v["n"], "corner_error_pct": v["frames_corner_error_pct"]},
            }
        },
    }


def measure_accuracy(artifacts, *, data: str | None = None, confidence: float = 0.95, batch: int = 32) -> dict:
    """Per artifact: top-1, per-class recall, and against the canonical model the drop with Tango's paired
    score interval, McNemar's exact p and top-1 agreement with Wilson's interval."""
    from ..train.canonical import load_canonical, onnx_logits

    out: dict[str, dict] = {}
    cache: dict[tuple, tuple] = {}
    for a in artifacts:
        if a.task == "pipeline":
            out[a.id] = _pipeline_accuracy(a)
            continue
        if a.labels is None:
            out[a.id] = {"skipped": "no labels: a bare model file is measured for latency only"}
            continue
        manifest = _dataset_for(a, data)
        if manifest is None:
            out[a.id] = {"skipped": "its dataset is not on this machine (pass --data)"}
            continue
        if a.identity.get("dataset_hash") not in (None, manifest.dataset_hash) and data is None:
            raise DataError(
                f"{a.id} was validated on dataset {a.identity['dataset_hash'][:12]}, not {manifest.dataset_hash[:12]}"
            )
        if a.task != "classification":
            out[a.id] = _task_accuracy(a, manifest, cache, batch)
            continue
        key = (str(manifest.location), a.canonical_path)
        if key not in cache:
            progress.info(f"accuracy: loading the test split of {manifest.name}")
            x, y = load_split(manifest, "test", a.preprocessing, a.labels)
            canonical = load_canonical(a.canonical_path) if a.canonical_path else None
            ref = onnx_logits(canonical.onnx, x) if canonical else None
            cache[key] = (x, y, ref, manifest.dataset_hash)
        x, y, ref, dataset_hash = cache[key]
        logits = np.concatenate([a.runner(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])
        pred = logits.argmax(1)
        correct = pred == y
        recall = {c: (float(correct[y == i].mean()) if (y == i).any() else None) for i, c in enumerate(a.labels)}
        row = {
            "n": int(len(y)),
            "dataset_hash": dataset_hash,
            "top1": float(correct.mean()),
            "per_class_recall": recall,
            "correct_bits": pack_bits(correct),
            "predictions": pred.astype(int).tolist(),
        }
        if ref is not None:
            ref_correct = ref.argmax(1) == y
            lost, gained, n = int((ref_correct & ~correct).sum()), int((~ref_correct & correct).sum()), len(y)
            agree = int((pred == ref.argmax(1)).sum())
            lo, hi = tango_interval(lost, gained, n, confidence)
            row |= {
                "canonical_top1": float(ref_correct.mean()),
                "drop_pt": 100 * (lost - gained) / n,
                "drop_ci_pt": [100 * lo, 100 * hi],
                "lost": lost,
                "gained": gained,
                "confidence": confidence,
                "mcnemar_p": mcnemar_p(ref_correct, correct),
                "agreement": agree / n,
                "agreement_ci": list(wilson_interval(agree, n, confidence)),
            }
        out[a.id] = row
    return out
