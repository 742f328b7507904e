"""Training data for the chain's second stage: the documents as the localiser cuts them out.

A classifier trained on whole photos has never seen a rectified crop, let alone one whose corners are a
little off. ``make_crops`` runs the localiser on every frame of a dataset, rectifies each frame by the
corners it predicted (at the classifier's input size) and, for the training split, adds crops whose
corners are moved further by noise as large as the localiser's own corner error on the validation split,
so the classifier learns the cuts it will get. Every crop keeps its frame's split (the frame's hash is
its group), so no test frame's crop is ever trained on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .. import progress
from .._io import atomic_dir, sha256_bytes
from ..data.manifest import MANIFEST_NAME, Record, build_manifest, load_manifest
from ..data.splits import read_images
from ..errors import DataError

__all__ = ["make_crops"]


def _jitter(corners: np.ndarray, sizes: np.ndarray, sd_pct: float, rng) -> np.ndarray:
    """Corners (N, 8 fractions) each moved by Gaussian noise of ``sd_pct`` % of the quad's diagonal."""
    px = corners.reshape(-1, 4, 2) * sizes[:, None, :]
    diag = 0.5 * (np.linalg.norm(px[:, 2] - px[:, 0], axis=1) + np.linalg.norm(px[:, 3] - px[:, 1], axis=1))
    px = px + rng.normal(0.0, 1.0, px.shape) * (sd_pct / 100.0 * diag)[:, None, None]
    return (px / sizes[:, None, :]).reshape(-1, 8)


def make_crops(
    localiser: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    size: tuple[int, int],
    copies: int = 3,
    jitter_pct: float | None = None,
    seed: int = 0,
) -> dict:
    """Write the crops dataset ``out`` (images/<label>/*.png + dataset.json); returns what was done."""
    from ..device.chain import localise_corners
    from ..tasks.localisation import corner_errors, rectify
    from .chain import canonical_stage

    stage = canonical_stage(localiser)
    if stage.task != "document-localisation":
        raise DataError(f"{localiser} is a {stage.task} model; crops need a document-localisation model")
    manifest = load_manifest(data)
    records = sorted(manifest.files, key=lambda r: r.path)
    if any(r.objects is not None for r in records) or not all(r.quad and r.label for r in records):
        raise DataError(
            f"dataset {manifest.name!r} is not one document per frame with its corners and its type",
            hint="use a dataset like `factory data synth` writes (a quad and a label per image)",
        )
    from ..tasks.localisation import DocumentLocalisation

    task = DocumentLocalisation()
    val = [r for r in records if r.split == "val"] or records
    val_corners = localise_corners(read_images(manifest, val), stage)
    measured = float(corner_errors(val_corners, task.targets(val, manifest.classes)).mean())
    sd = measured if jitter_pct is None else float(jitter_pct)
    rng = np.random.default_rng(seed)
    out_records: list[Record] = []
    split_of_frame = {}
    with atomic_dir(out) as tmp, progress.bar("rectifying frames", len(records)) as tick:
        for i in range(0, len(records), 64):
            chunk = records[i : i + 64]
            frames = read_images(manifest, chunk)
            corners = localise_corners(frames, stage)
            sizes = np.array([[r.width, r.height] for r in chunk], np.float64)
            for k in range(copies):
                moved = corners if k == 0 else _jitter(corners, sizes, sd, rng)
                for r, frame, c in zip(chunk, frames, moved, strict=True):
                    if k and r.split != "train":
                        continue  # only the training split is augmented; val and test are as the chain sees them
                    crop = rectify(frame, c, size)
                    ok, png = cv2.imencode(".png", crop)
                    rel = f"images/{r.label}/{Path(r.path).stem}-{k}.png"
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(png.tobytes())
                    split_of_frame[rel] = r.split
                    out_records.append(
                        Record(
                            path=rel,
                            sha256=sha256_bytes(png.tobytes()),
                            label=r.label,
                            width=size[0],
                            height=size[1],
                            group=r.group or r.sha256,
                        )  # fmt: skip
                    )
            tick(len(chunk))
        source = {
            "kind": "crops",
            "frames": {"name": manifest.name, "dataset_hash": manifest.dataset_hash},
            "localiser": str(localiser),
            "size": list(size),
            "copies": copies,
            "jitter_pct": sd,
            "localiser_val_corner_error_pct": measured,
            "seed": seed,
        }
        crops = build_manifest(f"{manifest.name}-crops", out_records, manifest.classes, fractions=manifest.split,
                               source=source)  # fmt: skip
        for rec in crops.files:  # exactly its frame's split, however the frames' splits were made
            rec.split = split_of_frame[rec.path]
        crops.save(tmp / MANIFEST_NAME)
    per_split = {s: sum(n.values()) for s, n in crops.counts().items()}
    return {
        "images": len(out_records),
        "per_split": per_split,
        "jitter_pct": sd,
        "localiser_val_corner_error_pct": measured,
    }
