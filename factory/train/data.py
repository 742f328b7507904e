"""Training data: decoded images cached in memory, augmentation for photographed documents.

Augmentation is OpenCV on uint8 images with a generator seeded per (seed, epoch, index), so a
training run is reproducible whatever the number of loader workers. It imitates how a phone sees a
document: perspective tilt, in-plane rotation, partial framing, lighting and contrast changes, defocus
or shake blur, sensor noise. It never flips (text is never mirrored) and never shifts hue (colour
schemes identify document types).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.manifest import DatasetManifest, Record
from ..errors import DataError
from ..preprocess import preprocess

__all__ = ["AUGMENT_SCHEMA_DEFAULTS", "augment", "ImageDataset", "load_images"]

AUGMENT_SCHEMA_DEFAULTS = {
    "perspective": 0.06,  # corner jitter, fraction of the image size
    "rotate_deg": 8.0,
    "scale": [0.85, 1.05],
    "brightness": 0.25,  # multiplicative, +-
    "contrast": 0.25,
    "blur_p": 0.3,
    "noise_std": 5.0,
}


def load_images(
    manifest: DatasetManifest, records: list[Record], max_side: int, progress: Callable[[int], None] | None = None
) -> list[np.ndarray]:
    """Decode every image once, shrunk so its long side is at most ``max_side`` (RAM stays small)."""
    out = []
    for rec in records:
        img = cv2.imread(str(manifest.resolve(rec)), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(
                f"cannot decode {manifest.resolve(rec)} listed in the dataset manifest", hint="re-import the dataset"
            )
        scale = max_side / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(
                img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA
            )
        out.append(img)
        if progress:
            progress(1)
    return out


def augment(img: np.ndarray, rng: np.random.Generator, cfg: dict, points: np.ndarray | None = None):
    """One random document-photo augmentation of a BGR image (seeded by ``rng``). With ``points`` (N x 2
    pixels, e.g. a document's corners), returns ``(image, points moved by the same warp)``."""
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    s = rng.uniform(*cfg["scale"])
    angle = np.deg2rad(rng.uniform(-cfg["rotate_deg"], cfg["rotate_deg"]))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    center = np.float32([w / 2, h / 2])
    dst = (src - center) @ rot.T * s + center
    dst += rng.normal(0, cfg["perspective"], (4, 2)).astype(np.float32) * np.float32([w, h])
    hom = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    out = cv2.warpPerspective(img, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    f = out.astype(np.float32)
    gain = 1 + rng.uniform(-cfg["brightness"], cfg["brightness"])
    contrast = 1 + rng.uniform(-cfg["contrast"], cfg["contrast"])
    mean = f.mean()
    f = (f - mean) * contrast + mean * gain
    if cfg["noise_std"] > 0:
        f += rng.normal(0, rng.uniform(0, cfg["noise_std"]), f.shape).astype(np.float32)
    out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < cfg["blur_p"]:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.2))
    if points is None:
        return out
    if len(points) == 0:  # a frame without objects: nothing to move
        return out, np.zeros((0, 2), np.float32)
    moved = cv2.perspectiveTransform(np.asarray(points, np.float32).reshape(-1, 1, 2), hom).reshape(-1, 2)
    return out, moved


class ImageDataset(Dataset):
    """(image tensor, label index) pairs; augmentation only when ``augment_cfg`` is given."""

    def __init__(
        self, images: list[np.ndarray], labels: list[int], spec: dict, *, augment_cfg: dict | None = None, seed: int = 0
    ):
        self.images, self.labels, self.spec = images, labels, spec
        self.augment_cfg, self.seed, self.epoch = augment_cfg, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.augment_cfg is not None:
            img = augment(img, np.random.default_rng([self.seed, self.epoch, i]), self.augment_cfg)
        return torch.from_numpy(preprocess(img, self.spec)[0]), self.labels[i]
