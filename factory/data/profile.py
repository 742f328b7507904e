"""The EDA step: a dataset profile as JSON plus pictures.

``profile.json`` holds class counts per split, image-size and brightness/contrast statistics (also as
the fixed-bucket reference histograms that monitoring compares devices against), per-class means
that expose shortcuts (a class that is simply darker), and duplicates found by content hash.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .._io import atomic_dir, write_json
from ..errors import DataError
from ..stats import BRIGHTNESS_EDGES, CONTRAST_EDGES, histogram, image_stats
from .manifest import DatasetManifest

__all__ = ["profile_dataset", "objects_profile", "write_report"]


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 3), "std": round(float(a.std()), 3), "min": round(float(a.min()), 3),
        "p05": round(float(np.percentile(a, 5)), 3), "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3), "max": round(float(a.max()), 3),
    }


def _read(manifest: DatasetManifest, rec) -> np.ndarray:
    img = cv2.imread(str(manifest.resolve(rec)), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read {manifest.resolve(rec)} listed in the manifest", hint="re-create the dataset")
    return img


def objects_profile(manifest: DatasetManifest) -> dict:
    """A detection set's shape: objects per frame, frames without any, box sizes (fractions of the frame)."""
    per_frame = [len(r.objects or []) for r in manifest.files]
    boxes = [(o["box"], r.width, r.height) for r in manifest.files for o in r.objects or []]
    widths = [(b[2] - b[0]) / w for b, w, _ in boxes] or [0.0]
    heights = [(b[3] - b[1]) / h for b, _, h in boxes] or [0.0]
    return {
        "frames": len(per_frame),
        "objects": len(boxes),
        "empty_frames": manifest.negatives(),
        "per_frame": {str(k): per_frame.count(k) for k in range(max(per_frame) + 1)},
        "per_frame_mean": round(float(np.mean(per_frame)), 4),
        "box_width_frac": _summary(widths),
        "box_height_frac": _summary(heights),
        "box_area_frac": _summary([a * b for a, b in zip(widths, heights, strict=True)]),
    }


def profile_dataset(manifest: DatasetManifest, progress: Callable[[int], None] | None = None) -> dict:
    bright: list[float] = []
    contrast: list[float] = []
    per_class: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_hash: dict[str, list] = defaultdict(list)
    for rec in manifest.files:
        b, c = image_stats(_read(manifest, rec))
        bright.append(b)
        contrast.append(c)
        if rec.objects is None:
            per_class[rec.label].append((b, c))
        by_hash[rec.sha256].append(rec)
        if progress:
            progress(1)
    dup_groups = [[r.path for r in recs] for recs in by_hash.values() if len(recs) > 1]
    cross_split = [[f"{r.split}:{r.path}" for r in recs] for recs in by_hash.values() if len({r.split for r in recs}) > 1]
    label_conflicts = [[f"{r.label}:{r.path}" for r in recs] for recs in by_hash.values() if len({r.label for r in recs}) > 1]
    counts = manifest.counts()
    totals = {c: sum(counts[s][c] for s in counts) for c in manifest.classes}
    biggest, smallest = max(totals.values()), min(totals.values())
    return {
        "dataset": manifest.name,
        "dataset_hash": manifest.dataset_hash,
        "images": len(manifest.files),
        "classes": manifest.classes,
        "class_counts": {"total": totals, **counts},
        "imbalance_ratio": round(biggest / max(smallest, 1), 3),
        "image_size": {
            "width": _summary([r.width for r in manifest.files]),
            "height": _summary([r.height for r in manifest.files]),
            "distinct": sorted({f"{r.width}x{r.height}" for r in manifest.files}),
        },
        "brightness": _summary(bright),
        "contrast": _summary(contrast),
        "per_class": {
            c: {"brightness_mean": round(float(np.mean([v[0] for v in per_class[c]])), 3),
                "contrast_mean": round(float(np.mean([v[1] for v in per_class[c]])), 3)}
            for c in manifest.classes
            if per_class[c]
        },
        "reference_histograms": {
            "brightness": {"edges": BRIGHTNESS_EDGES, "counts": histogram(bright, BRIGHTNESS_EDGES)},
            "contrast": {"edges": CONTRAST_EDGES, "counts": histogram(contrast, CONTRAST_EDGES)},
        },
        "quads": sum(1 for r in manifest.files if r.quad is not None),
        **({"objects": objects_profile(manifest)} if manifest.detection else {}),
        "duplicates": {
            "groups": len(dup_groups),
            "extra_copies": sum(len(g) - 1 for g in dup_groups),
            "across_splits": cross_split,
            "conflicting_labels": label_conflicts,
            "examples": dup_groups[:20],
        },
    }


def _plot_balance(profile: dict, path: Path) -> None:
    from .._deps import pyplot

    plt = pyplot()

    classes = profile["classes"]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(classes) + 2), 4))
    bottom = np.zeros(len(classes))
    for split, color in (("train", "#4363d8"), ("val", "#f58231"), ("test", "#3cb44b")):
        vals = np.array([profile["class_counts"][split][c] for c in classes])
        ax.bar(classes, vals, bottom=bottom, label=split, color=color)
        bottom += vals
    ax.set_ylabel("objects" if "objects" in profile else "images")
    ax.set_title(f"class balance: {profile['dataset']} ({profile['images']} images)")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sample_grid(manifest: DatasetManifest, path: Path, per_class: int, cell: int = 128) -> None:
    rows = []
    for c in manifest.classes:
        recs = sorted((r for r in manifest.files if c in r.labels), key=lambda r: r.sha256)[:per_class]
        tiles = []
        for r in recs:
            img = _read(manifest, r)
            for o in r.objects or []:
                x1, y1, x2, y2 = (int(round(v)) for v in o["box"])
                color = (0, 255, 0) if o["label"] == c else (0, 160, 255)
                cv2.rectangle(img, (x1, y1), (x2, y2), color, max(1, img.shape[1] // 200), cv2.LINE_AA)
            if r.quad is not None:
                cv2.polylines(img, [np.asarray(r.quad, np.int32)], True, (0, 255, 0), max(1, img.shape[1] // 200), cv2.LINE_AA)
            scale = cell / max(img.shape[:2])
            img = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            tile = np.full((cell, cell, 3), 255, np.uint8)
            tile[: img.shape[0], : img.shape[1]] = img
            tiles.append(tile)
        tiles += [np.full((cell, cell, 3), 255, np.uint8)] * (per_class - len(tiles))
        label = np.full((cell, 170, 3), 255, np.uint8)
        cv2.putText(label, c[:22], (4, cell // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.hstack([label] + tiles))
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise DataError(f"could not write {path}")


def write_report(manifest: DatasetManifest, out: str | Path, *, samples_per_class: int = 6,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Write ``profile.json``, ``class_balance.png`` and ``samples.png`` into ``out`` (atomically)."""
    profile = profile_dataset(manifest, progress)
    with atomic_dir(out) as tmp:
        write_json(tmp / "profile.json", profile)
        _plot_balance(profile, tmp / "class_balance.png")
        _sample_grid(manifest, tmp / "samples.png", samples_per_class)
    return profile
