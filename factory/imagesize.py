"""An image's size from its header, before any pixel is decoded: the guard against decompression bombs.

A 48 KB PNG can declare 20000 x 20000 pixels; ``cv2.imdecode`` then allocates 1.2 GB and spends seconds
before any size check could run. Every image that comes from outside (registry captures, ``factory data
import``, the agent's image folders) is sized here first and refused when it exceeds the limit.
Formats: PNG (IHDR), JPEG (the first SOFn marker), GIF, BMP, WebP (VP8, VP8L, VP8X) and TIFF (IFD0).
"""

from __future__ import annotations

import struct

from .errors import InputError

__all__ = ["header_size", "check_size", "decode_checked", "ImageTooLarge", "MAX_SIDE", "MAX_PIXELS"]

MAX_SIDE = 8192
MAX_PIXELS = 8192 * 8192


class ImageTooLarge(InputError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def _png(b: bytes):
    if len(b) >= 24 and b[12:16] == b"IHDR":
        return struct.unpack(">II", b[16:24])
    return None


def _jpeg(b: bytes):
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: height, width
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp(b: bytes):
    if len(b) < 30:
        return None
    kind = b[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(b[24:27], "little"), 1 + int.from_bytes(b[27:30], "little")
    if kind == b"VP8 " and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _tiff(b: bytes):
    order = "<" if b[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", b[4:8])
        (n,) = struct.unpack(order + "H", b[ifd : ifd + 2])
        dims = {}
        for k in range(min(n, 512)):
            entry = b[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
            tag, typ = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257):
                fmt = order + ("H" if typ == 3 else "I")
                dims[tag] = struct.unpack(fmt, entry[8:10] if typ == 3 else entry[8:12])[0]
        return (dims[256], dims[257]) if len(dims) == 2 else None
    except (struct.error, KeyError):
        return None


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from the header, or None when the format is not one of the known."""
    b = bytes(data[:65536])
    found = None
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        found = "png", _png(b)
    elif b.startswith(b"\xff\xd8"):
        found = "jpeg", _jpeg(b)
    elif b[:6] in (b"GIF87a", b"GIF89a") and len(b) >= 10:
        found = "gif", struct.unpack("<HH", b[6:10])
    elif b.startswith(b"BM") and len(b) >= 26:
        w, h = struct.unpack("<ii", b[18:26])
        found = "bmp", (abs(w), abs(h))
    elif b.startswith(b"RIFF") and b[8:12] == b"WEBP":
        found = "webp", _webp(b)
    elif b[:4] in (b"II*\x00", b"MM\x00*"):
        found = "tiff", _tiff(b)
    if found is None:
        return None
    fmt, dims = found
    if dims is None:
        return fmt, -1, -1  # a known format whose header is broken: the caller refuses it
    return fmt, int(dims[0]), int(dims[1])


def check_size(
    data: bytes,
    *,
    what: str = "image",
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> tuple[str, int, int]:
    """The header's ``(format, width, height)``; :class:`ImageTooLarge` (or InputError for an unknown format,
    a broken header, or a format not in ``formats``) before any decoding."""
    size = header_size(data)
    if size is None or size[1] < 0:
        raise InputError(f"{what} is corrupt or not a JPEG, PNG, BMP, GIF, WebP or TIFF (no valid header)")
    fmt, w, h = size
    if formats and fmt not in formats:
        raise InputError(f"{what} is {fmt.upper()}; only {', '.join(f.upper() for f in formats)} are accepted")
    if w > max_side or h > max_side or w * h > max_pixels:
        raise ImageTooLarge(
            f"{what} declares {w} x {h} pixels, over the limit of {max_side} a side and {max_pixels:,} in all; "
            "refused before decoding",
            hint="resize it before sending or importing it",
        )
    return fmt, w, h


def decode_checked(data: bytes, **limits):
    """Size from the header (:func:`check_size`), then ``cv2.imdecode`` (BGR); None when OpenCV cannot decode."""
    import cv2
    import numpy as np

    check_size(data, **limits)
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
