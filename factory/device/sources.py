"""Frame sources for the device agent: a folder of images, a video file, or a camera (OpenCV)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..data.importers import IMAGE_SUFFIXES
from ..errors import InputError

__all__ = ["frames"]


def _folder(path: Path, loop: bool) -> Iterator[np.ndarray]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{path} holds no images")
    from ..imagesize import decode_checked

    for f in itertools.cycle(files) if loop else files:
        try:
            img = decode_checked(f.read_bytes(), what=str(f))  # sized from its header first
        except (OSError, InputError):
            img = None
        if img is not None:  # an unreadable or oversized file is skipped, not fatal, on a device
            yield img


def _capture(spec: str | int, loop: bool) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(spec)
    if not cap.isOpened():
        raise InputError(f"OpenCV cannot open {spec!r}", hint="check the path or camera index")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                if loop and isinstance(spec, str):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                if not ok:
                    return
            yield frame
    finally:
        cap.release()


def frames(source: str, loop: bool = True) -> Iterator[np.ndarray]:
    """``camera:0`` for a camera, a folder for images, anything else is a video file."""
    if source.startswith("camera:"):
        return _capture(int(source.split(":", 1)[1]), False)
    p = Path(source)
    if p.is_dir():
        return _folder(p, loop)
    if not p.is_file():
        raise InputError(f"frame source {source} does not exist")
    return _capture(str(p), loop)
