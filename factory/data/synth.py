"""Deterministic MIDV-500-style photographs of identity documents.

Each sample: a document (see :mod:`factory.data.documents`) drawn flat, warped by a random
perspective onto a cluttered background, then lit unevenly (gradient, glare, shadow), blurred,
noised and JPEG-compressed. Every sample has its own generator seeded by (seed, class, index), so
the same seed gives the same bytes whatever the order or the number of classes asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .._io import atomic_dir, sha256_bytes
from ..errors import DataError
from .cvat import CvatImage, write_cvat
from .documents import FONT, document_types, get_document, render_document
from .objects import box_of
from .manifest import DEFAULT_SPLIT, MANIFEST_NAME, DatasetManifest, Record, build_manifest

__all__ = ["synthesize", "synthesize_frames", "render_scene", "render_frame", "parse_size"]

Rng = np.random.Generator


def parse_size(value: str) -> tuple[int, int]:
    """'256x192' -> (256, 192); a malformed size is a DataError."""
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise DataError(f"image size {value!r} is not WIDTHxHEIGHT, e.g. 256x192") from None
    return w, h


def _background(rng: Rng, w: int, h: int) -> np.ndarray:
    base = rng.integers(30, 220, 3).astype(np.float32)
    small = rng.normal(0, 1, (max(2, h // 12), max(2, w // 12), 3)).astype(np.float32)
    texture = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 30)
    img = np.clip(base + texture, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:  # wood grain / fabric stripes
        for y in range(0, h, int(rng.integers(3, 9))):
            shade = tuple(int(v) for v in np.clip(base * rng.uniform(0.75, 1.15), 0, 255))
            cv2.line(img, (0, y), (w, y + int(rng.integers(-8, 9))), shade, 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 10))):  # clutter: papers, pens, coins, keyboard keys, text
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            box = cv2.boxPoints(((cx, cy), (float(rng.integers(10, w // 2)), float(rng.integers(10, h // 2))), float(rng.uniform(0, 180))))
            cv2.fillPoly(img, [box.astype(np.int32)], color, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(img, (cx, cy), int(rng.integers(4, h // 4)), color, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(img, (cx, cy), (int(rng.integers(0, w)), int(rng.integers(0, h))), color, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            cv2.putText(img, "".join(rng.choice(list("ABCDEFGHKMNPRSTWXZ0123456789"), 6)), (cx, cy), FONT, rng.uniform(0.3, 0.9), color, 1, cv2.LINE_AA)
    return img


def _target_quad(rng: Rng, w: int, h: int, aspect: float) -> np.ndarray:
    dw = w * rng.uniform(0.55, 0.88)
    dh = dw / aspect
    if dh > 0.85 * h:
        dh = 0.85 * h
        dw = dh * aspect
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    corners = np.array([[-dw / 2, -dh / 2], [dw / 2, -dh / 2], [dw / 2, dh / 2], [-dw / 2, dh / 2]])
    theta = np.deg2rad(rng.uniform(-18, 18))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    quad = corners @ rot.T + [cx, cy] + rng.normal(0, 0.05 * dw, (4, 2))
    quad[:, 0] = np.clip(quad[:, 0], -0.03 * w, 1.03 * w)
    quad[:, 1] = np.clip(quad[:, 1], -0.03 * h, 1.03 * h)
    return quad.astype(np.float32)


def _photometric(img: np.ndarray, rng: Rng) -> np.ndarray:
    h, w = img.shape[:2]
    f = img.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ax, ay = rng.uniform(-1, 1, 2)
    light = rng.uniform(0.7, 1.1) + 0.3 * (ax * (xx / w - 0.5) + ay * (yy / h - 0.5))
    f *= light[..., None]
    if rng.random() < 0.35:  # glare from a lamp
        gx, gy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.08, 0.25) * w
        f += rng.uniform(60, 160) * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * s * s))[..., None]
    if rng.random() < 0.3:  # a shadow across part of the frame
        mask = np.zeros((h, w), np.float32)
        pts = rng.uniform([0, 0], [w, h], (4, 2)).astype(np.int32)
        cv2.fillPoly(mask, [cv2.convexHull(pts)], 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.04 * w)
        f *= (1 - rng.uniform(0.2, 0.45) * mask)[..., None]
    out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.4))
    elif rng.random() < 0.5:  # hand-shake motion blur
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        out = cv2.filter2D(out, -1, kernel / max(kernel.sum(), 1e-6))
    noise = rng.normal(0, rng.uniform(1.0, 7.0), out.shape)
    return np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, doc_type: str, quad: np.ndarray, rng: Rng) -> np.ndarray:
    """``frame`` with a freshly drawn document of ``doc_type`` warped onto ``quad`` (TL, TR, BR, BL px)."""
    h, w = frame.shape[:2]
    aspect = get_document(doc_type).aspect
    span = float(np.linalg.norm(quad[1] - quad[0]))
    doc = render_document(doc_type, rng, width=480)
    doc = cv2.resize(doc, (max(8, int(span * 1.3)), max(8, int(span * 1.3 / aspect))), interpolation=cv2.INTER_AREA)
    dh, dw = doc.shape[:2]
    src = np.array([[0, 0], [dw, 0], [dw, dh], [0, dh]], np.float32)
    hom = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    warped = cv2.warpPerspective(doc, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpPerspective(np.ones((dh, dw), np.float32), hom, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    return (frame * (1 - alpha) + warped * alpha).astype(np.uint8)


def render_scene(doc_type: str, rng: Rng, size: tuple[int, int] = (256, 192)) -> tuple[np.ndarray, np.ndarray]:
    """Return (BGR photograph, quad of the document corners TL, TR, BR, BL in pixels)."""
    w, h = size
    frame = _background(rng, w, h)
    quad = _target_quad(rng, w, h, get_document(doc_type).aspect)
    return _photometric(_paste(frame, doc_type, quad, rng), rng), quad


def _box_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _small_quad(rng: Rng, w: int, h: int, aspect: float) -> np.ndarray:
    """A document 22-45% of the frame's width, tilted and in perspective, wholly inside the frame."""
    dw = w * rng.uniform(0.22, 0.45)
    dh = min(dw / aspect, 0.6 * h)
    dw = dh * aspect
    theta = np.deg2rad(rng.uniform(-25, 25))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    corners = np.array([[-dw / 2, -dh / 2], [dw / 2, -dh / 2], [dw / 2, dh / 2], [-dw / 2, dh / 2]]) @ rot.T
    corners += rng.normal(0, 0.04 * dw, (4, 2))
    lo, hi = -corners.min(0) + 1, np.array([w, h]) - corners.max(0) - 1
    return (corners + rng.uniform(lo, np.maximum(lo, hi))).astype(np.float32)


def render_frame(doc_types: list[str], rng: Rng, size: tuple[int, int], max_objects: int = 3) -> tuple[np.ndarray, list[dict]]:
    """A frame with 0..``max_objects`` documents (about one frame in seven is empty: a valid negative) and
    their objects: type, box and quad in pixels. Documents overlap little (box IoU <= 0.15)."""
    w, h = size
    frame = _background(rng, w, h)
    n = 0 if rng.random() < 0.15 else int(rng.integers(1, max_objects + 1))
    objects: list[dict] = []
    for _ in range(n):
        doc_type = str(rng.choice(doc_types))
        for _attempt in range(20):
            quad = _small_quad(rng, w, h, get_document(doc_type).aspect)
            box = box_of(quad)
            if all(_box_iou(box, o["box"]) <= 0.15 for o in objects):
                break
        else:
            continue
        frame = _paste(frame, doc_type, quad, rng)
        objects.append({"label": doc_type, "box": box, "quad": [[round(float(x), 2), round(float(y), 2)] for x, y in quad]})
    return _photometric(frame, rng), objects


def _encode(img: np.ndarray, rng: Rng, what: str) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 96))])
    if not ok:
        raise DataError(f"OpenCV could not encode {what} as JPEG")
    return buf.tobytes()


def synthesize_frames(
    out: str | Path,
    *,
    seed: int = 0,
    frames: int = 1000,
    size: tuple[int, int] = (256, 192),
    classes: list[str] | None = None,
    max_objects: int = 3,
    fractions: dict[str, float] | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetManifest:
    """Detection frames: ``out/images/frames/*.jpg`` with 0..``max_objects`` documents each, CVAT 1.1
    boxes and polygons in ``out/annotations.xml`` and ``out/dataset.json`` (objects per frame)."""
    classes = list(classes or document_types())
    for c in classes:
        get_document(c)
    if frames < 1 or max_objects < 1:
        raise DataError(f"need frames >= 1 and max_objects >= 1, got {frames} and {max_objects}")
    if size[0] < 64 or size[1] < 64:
        raise DataError(f"image size {size} is too small for frames of several documents; use at least 64x64")
    records: list[Record] = []
    cvat_images: list[CvatImage] = []
    with atomic_dir(out) as tmp:
        (tmp / "images/frames").mkdir(parents=True)
        for i in range(frames):
            rng = np.random.default_rng([seed, 1_000_003, i])
            img, objects = render_frame(classes, rng, size, max_objects)
            data = _encode(img, rng, f"frame {i}")
            rel = f"images/frames/frame-{i:05d}.jpg"
            (tmp / rel).write_bytes(data)
            records.append(Record(path=rel, sha256=sha256_bytes(data), label="", width=size[0], height=size[1], objects=objects))
            cvat_images.append(CvatImage(name=rel, width=size[0], height=size[1], label=None, quad=None, objects=objects))
            if progress:
                progress(1)
        write_cvat(tmp / "annotations.xml", cvat_images, classes, task_name="factory-synth-frames")
        source = {"kind": "synth-frames", "seed": seed, "frames": frames, "max_objects": max_objects, "size": list(size)}
        manifest = build_manifest("synth-frames", records, classes, fractions=fractions or DEFAULT_SPLIT, source=source)
        manifest.save(tmp / MANIFEST_NAME)
    manifest.location = Path(out) / MANIFEST_NAME
    return manifest


def synthesize(
    out: str | Path,
    *,
    seed: int = 0,
    per_class: int = 300,
    size: tuple[int, int] = (256, 192),
    classes: list[str] | None = None,
    fractions: dict[str, float] | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetManifest:
    """Write ``out/images/<type>/*.jpg``, ``out/annotations.xml`` (CVAT 1.1) and ``out/dataset.json``."""
    classes = list(classes or document_types())
    for c in classes:
        get_document(c)  # unknown types fail before anything is written
    if per_class < 1:
        raise DataError(f"per_class must be >= 1, got {per_class}")
    if size[0] < 32 or size[1] < 32:
        raise DataError(f"image size {size} is too small; use at least 32x32")
    all_types = document_types()
    records: list[Record] = []
    cvat_images: list[CvatImage] = []
    with atomic_dir(out) as tmp:
        for c in classes:
            for i in range(per_class):
                rng = np.random.default_rng([seed, all_types.index(c), i])
                img, quad = render_scene(c, rng, size)
                data = _encode(img, rng, f"sample {c}/{i}")
                rel = f"images/{c}/{c}-{i:05d}.jpg"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)  # inside the temp folder: the folder's rename is the commit
                q = [[round(float(x), 2), round(float(y), 2)] for x, y in quad]
                records.append(Record(path=rel, sha256=sha256_bytes(data), label=c, width=size[0], height=size[1], quad=q))
                cvat_images.append(CvatImage(name=rel, width=size[0], height=size[1], label=c, quad=q))
                if progress:
                    progress(1)
        write_cvat(tmp / "annotations.xml", cvat_images, classes, task_name="factory-synth")
        source = {"kind": "synth", "seed": seed, "per_class": per_class, "size": list(size)}
        manifest = build_manifest("synth", records, classes, fractions=fractions or DEFAULT_SPLIT, source=source)
        manifest.save(tmp / MANIFEST_NAME)
    manifest.location = Path(out) / MANIFEST_NAME
    return manifest
