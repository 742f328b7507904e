"""Evaluation and calibration tensors drawn from a dataset manifest, with hashes for lineage.

Build validation, benchmarks and quantization read images through here, preprocessed exactly as a
model card or bundle manifest says (:func:`factory.preprocess.preprocess`)."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from .._io import canonical_json
from .manifest import DatasetManifest, Record
from ..errors import DataError
from ..preprocess import preprocess

__all__ = ["read_images", "load_split", "load_split_images", "calibration_set"]


def read_images(manifest: DatasetManifest, records: list[Record]) -> list[np.ndarray]:
    """The records' images, decoded BGR as OpenCV reads them; DataError naming a file that does not decode."""
    images = []
    for r in records:
        img = cv2.imread(str(manifest.resolve(r)), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"cannot decode {manifest.resolve(r)} listed in {manifest.location}", hint="re-create the dataset")
        images.append(img)
    return images


def load_split(manifest: DatasetManifest, split: str, spec: dict, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(preprocessed batch, label indices) of a whole split, in manifest order."""
    records = sorted(manifest.subset(split), key=lambda r: r.path)
    if not records:
        raise DataError(f"dataset {manifest.name!r} has no {split} images")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise DataError(f"dataset labels {unknown} are not among the model's labels {classes}",
                        hint="evaluate on the dataset the model was trained on")
    return preprocess(read_images(manifest, records), spec), np.array([index[r.label] for r in records])


def load_split_images(manifest: DatasetManifest, split: str, spec: dict) -> tuple[np.ndarray, list[Record]]:
    """(preprocessed batch, records) of a whole split in manifest order, for tasks whose targets are not
    one label per image (the task makes targets of the records)."""
    records = sorted(manifest.subset(split), key=lambda r: r.path)
    if not records:
        raise DataError(f"dataset {manifest.name!r} has no {split} images")
    return preprocess(read_images(manifest, records), spec), records


def calibration_set(manifest: DatasetManifest, spec: dict, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """A seeded sample of the training split, preprocessed, plus its provenance."""
    train = sorted(manifest.subset("train"), key=lambda r: r.path)
    if not train:
        raise DataError(f"dataset {manifest.name!r} has no training images to calibrate with")
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[: max(1, min(n, len(train)))])
    records = [train[i] for i in pick]
    batch = preprocess(read_images(manifest, records), spec)
    info = {
        "split": "train",
        "n": len(records),
        "seed": seed,
        "dataset_hash": manifest.dataset_hash,
        "files_sha256": hashlib.sha256(canonical_json([r.sha256 for r in records])).hexdigest(),
        "tensor_sha256": hashlib.sha256(batch.tobytes()).hexdigest(),
    }
    return batch, info
