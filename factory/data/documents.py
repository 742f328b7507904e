"""Identity-document templates for the synthetic MIDV-500-style generator.

Each document type is one function registered with :func:`register_document`; it draws a flat
document (BGR uint8) with OpenCV from a seeded ``numpy.random.Generator``. Types differ the way real
documents do: aspect ratio (ID-1, TD2, TD3), colour scheme, emblem, photo box position, text-line
layout, chip or barcode, and the presence and format of a machine-readable zone (MRZ). Within a type
every sample varies: names, numbers, portrait, tints and pattern phases.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..errors import UnknownNameError

__all__ = ["DocumentType", "register_document", "document_types", "get_document", "render_document"]

Rng = np.random.Generator
Color = tuple[int, int, int]  # BGR

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_BOLD = cv2.FONT_HERSHEY_DUPLEX
FONT_MONO = cv2.FONT_HERSHEY_PLAIN
_LETTERS = string.ascii_uppercase
_MRZ_CHARS = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class DocumentType:
    name: str
    aspect: float  # width / height
    description: str
    draw: Callable[[np.ndarray, Rng], None]


_REGISTRY: dict[str, DocumentType] = {}


def register_document(name: str, aspect: float, description: str):
    def deco(fn: Callable[[np.ndarray, Rng], None]):
        _REGISTRY[name] = DocumentType(name, aspect, description, fn)
        return fn

    return deco


def document_types() -> list[str]:
    return sorted(_REGISTRY)


def get_document(name: str) -> DocumentType:
    if name not in _REGISTRY:
        raise UnknownNameError("document type", name, document_types())
    return _REGISTRY[name]


def render_document(name: str, rng: Rng, width: int = 480) -> np.ndarray:
    doc = get_document(name)
    height = int(round(width / doc.aspect))
    img = np.zeros((height, width, 3), np.uint8)
    doc.draw(img, rng)
    return img


# ---------------------------------------------------------------- drawing primitives


def _jitter(color: Color, rng: Rng, amount: int = 12) -> Color:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)  # type: ignore


def _gradient(img: np.ndarray, c0: Color, c1: Color, vertical: bool = False) -> None:
    h, w = img.shape[:2]
    t = np.linspace(0.0, 1.0, h if vertical else w, dtype=np.float32)
    t = t[:, None, None] if vertical else t[None, :, None]
    grad = (1 - t) * np.array(c0, np.float32) + t * np.array(c1, np.float32)
    img[:] = np.broadcast_to(grad, img.shape).astype(np.uint8)


def _guilloche(img: np.ndarray, rng: Rng, color: Color, lines: int = 14, amp: float = 0.08) -> None:
    h, w = img.shape[:2]
    xs = np.linspace(0, w, 160)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 5.0)
    for k in range(lines):
        y0 = (k + 0.5) * h / lines
        ys = y0 + amp * h * np.sin(freq * 2 * np.pi * xs / w + phase + k * 0.6)
        pts = np.stack([xs, ys], 1).astype(np.int32)
        cv2.polylines(img, [pts], False, color, 1, cv2.LINE_AA)


def _rosette(img: np.ndarray, center: tuple[int, int], radius: int, color: Color, petals: int) -> None:
    t = np.linspace(0, 2 * np.pi, 360)
    for k in range(3):
        r = radius * (0.55 + 0.45 * np.abs(np.cos(petals * t / 2 + k * 0.5)))
        pts = np.stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t)], 1).astype(np.int32)
        cv2.polylines(img, [pts], True, color, 1, cv2.LINE_AA)


def _star(img: np.ndarray, center: tuple[int, int], radius: float, color: Color, points: int = 5) -> None:
    ang = np.linspace(-np.pi / 2, 1.5 * np.pi, 2 * points, endpoint=False)
    rad = np.where(np.arange(2 * points) % 2 == 0, radius, radius * 0.45)
    pts = np.stack([center[0] + rad * np.cos(ang), center[1] + rad * np.sin(ang)], 1).astype(np.int32)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA)


def _star_ring(img: np.ndarray, center: tuple[int, int], radius: int, color: Color) -> None:
    for k in range(12):
        a = 2 * np.pi * k / 12
        _star(img, (int(center[0] + radius * np.cos(a)), int(center[1] + radius * np.sin(a))), radius * 0.16, color)


def _shield(img: np.ndarray, x: int, y: int, w: int, h: int, fill: Color, edge: Color) -> None:
    pts = np.array([[x, y], [x + w, y], [x + w, y + int(h * 0.55)], [x + w // 2, y + h], [x, y + int(h * 0.55)]], np.int32)
    cv2.fillPoly(img, [pts], fill, cv2.LINE_AA)
    cv2.polylines(img, [pts], True, edge, 2, cv2.LINE_AA)
    cv2.line(img, (x + w // 2, y + 4), (x + w // 2, y + h - 6), edge, 2, cv2.LINE_AA)


def _portrait(img: np.ndarray, rng: Rng, x: int, y: int, w: int, h: int, bg: Color | None = None) -> None:
    bg = bg or _jitter((200, 205, 210), rng, 25)
    cv2.rectangle(img, (x, y), (x + w, y + h), bg, -1)
    skin = _jitter((140, 170, 205), rng, 45)
    hair = _jitter((40, 45, 50), rng, 35)
    cloth = tuple(int(v) for v in rng.integers(20, 200, 3))
    cx, cy = x + w // 2 + int(rng.integers(-w // 12, w // 12 + 1)), y + int(h * 0.42)
    cv2.ellipse(img, (cx, y + h), (int(w * 0.48), int(h * 0.3)), 0, 180, 360, cloth, -1, cv2.LINE_AA)
    cv2.ellipse(img, (cx, cy - int(h * 0.05)), (int(w * 0.27), int(h * 0.25)), 0, 180, 360, hair, -1, cv2.LINE_AA)
    cv2.ellipse(img, (cx, cy), (int(w * 0.22), int(h * 0.26)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    for dx in (-1, 1):
        cv2.circle(img, (cx + dx * int(w * 0.08), cy - int(h * 0.03)), max(1, w // 40), (40, 40, 40), -1)
    cv2.rectangle(img, (x, y), (x + w, y + h), (90, 90, 90), 1)


def _word(rng: Rng, lo: int = 4, hi: int = 10) -> str:
    return "".join(rng.choice(list(_LETTERS), int(rng.integers(lo, hi + 1))))


def _digits(rng: Rng, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def _date(rng: Rng) -> str:
    return f"{rng.integers(1, 29):02d}.{rng.integers(1, 13):02d}.{rng.integers(1950, 2030)}"


def _field(img: np.ndarray, rng: Rng, x: int, y: int, label: str, value: str, scale: float, tint: Color) -> None:
    cv2.putText(img, label, (x, y), FONT, scale * 0.55, tint, 1, cv2.LINE_AA)
    cv2.putText(img, value, (x, y + int(22 * scale)), FONT_BOLD, scale * 0.8, (25, 25, 30), 1, cv2.LINE_AA)


def _fields(img: np.ndarray, rng: Rng, x: int, y: int, labels: list[str], step: int, scale: float, tint: Color) -> None:
    for i, label in enumerate(labels):
        value = _date(rng) if "DATE" in label or "VALID" in label else f"{_word(rng)} {_word(rng, 2, 6)}"
        _field(img, rng, x, y + i * step, label, value, scale, tint)


def _mrz(img: np.ndarray, rng: Rng, lines: int, chars: int, band: Color | None = None) -> None:
    h, w = img.shape[:2]
    line_h = int(h * 0.075)
    top = h - lines * line_h - int(h * 0.04)
    if band is not None:
        cv2.rectangle(img, (0, top - line_h // 3), (w, h), band, -1)
    scale = (w * 0.92 / chars) / 10.5
    for i in range(lines):
        fill = max(0, chars - int(rng.integers(chars // 4, chars // 2)))
        text = "".join(rng.choice(list(_MRZ_CHARS), fill)) + "<" * (chars - fill)
        cv2.putText(img, text, (int(w * 0.04), top + (i + 1) * line_h - line_h // 5), FONT_MONO, scale, (20, 20, 20), 1, cv2.LINE_AA)


def _chip(img: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    cv2.rectangle(img, (x, y), (x + w, y + h), (80, 180, 215), -1, cv2.LINE_AA)
    cv2.rectangle(img, (x, y), (x + w, y + h), (40, 110, 150), 1, cv2.LINE_AA)
    for t in (1, 2):
        cv2.line(img, (x, y + t * h // 3), (x + w, y + t * h // 3), (40, 110, 150), 1)
    cv2.line(img, (x + w // 2, y), (x + w // 2, y + h), (40, 110, 150), 1)


def _barcode(img: np.ndarray, rng: Rng, x: int, y: int, w: int, h: int) -> None:
    pos = x
    while pos < x + w:
        bar = int(rng.integers(1, 4))
        if rng.random() < 0.55:
            cv2.rectangle(img, (pos, y), (min(pos + bar, x + w), y + h), (15, 15, 15), -1)
        pos += bar + int(rng.integers(1, 3))


def _signature(img: np.ndarray, rng: Rng, x: int, y: int, w: int, h: int) -> None:
    t = np.linspace(0, 1, 60)
    ys = y + h / 2 + h * 0.4 * np.sin(2 * np.pi * (t * rng.uniform(1.5, 3.5)) + rng.uniform(0, 6)) * np.exp(-t)
    pts = np.stack([x + t * w, ys], 1).astype(np.int32)
    cv2.polylines(img, [pts], False, (110, 40, 20), 2, cv2.LINE_AA)


def _title(img: np.ndarray, text: str, x: int, y: int, scale: float, color: Color, thick: int = 2) -> None:
    cv2.putText(img, text, (x, y), FONT_BOLD, scale, color, thick, cv2.LINE_AA)


# ---------------------------------------------------------------- the document types


@register_document("id-card", 1.586, "national ID card (ID-1): blue, photo left, star emblem, 3-line MRZ")
def _id_card(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((235, 215, 190), rng), _jitter((250, 235, 215), rng))
    _guilloche(img, rng, _jitter((225, 190, 150), rng), 16)
    cv2.rectangle(img, (0, 0), (w, int(h * 0.16)), _jitter((140, 70, 20), rng), -1)
    _title(img, "IDENTITY CARD", int(w * 0.05), int(h * 0.115), w / 640, (255, 255, 255))
    cv2.circle(img, (int(w * 0.88), int(h * 0.3)), int(h * 0.1), _jitter((140, 70, 20), rng), -1, cv2.LINE_AA)
    _star(img, (int(w * 0.88), int(h * 0.3)), h * 0.07, (60, 200, 240))
    _portrait(img, rng, int(w * 0.04), int(h * 0.22), int(w * 0.26), int(h * 0.5))
    _fields(img, rng, int(w * 0.35), int(h * 0.27), ["SURNAME", "GIVEN NAMES", "DATE OF BIRTH"], int(h * 0.12), w / 480, (140, 70, 20))
    _mrz(img, rng, 3, 30)


@register_document("passport", 1.42, "passport data page (TD3): burgundy header, large photo left, 2-line MRZ band")
def _passport(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((215, 210, 240), rng), _jitter((235, 225, 245), rng), vertical=True)
    _rosette(img, (int(w * 0.62), int(h * 0.45)), int(h * 0.3), _jitter((190, 170, 220), rng), int(rng.integers(7, 11)))
    cv2.rectangle(img, (0, 0), (w, int(h * 0.12)), _jitter((40, 20, 120), rng), -1)
    _title(img, "PASSPORT  PASSEPORT", int(w * 0.04), int(h * 0.085), w / 700, (220, 230, 245))
    _portrait(img, rng, int(w * 0.04), int(h * 0.17), int(w * 0.28), int(h * 0.48))
    _fields(img, rng, int(w * 0.36), int(h * 0.2), ["TYPE / CODE", "SURNAME", "GIVEN NAMES", "DATE OF EXPIRY"], int(h * 0.11), w / 520, (60, 30, 120))
    _mrz(img, rng, 2, 44, band=(245, 245, 245))


@register_document("driving-licence", 1.586, "driving licence (ID-1): pink-green, blue star band left, numbered fields, no MRZ")
def _driving_licence(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((200, 190, 245), rng), _jitter((200, 235, 205), rng))
    _guilloche(img, rng, _jitter((190, 170, 230), rng), 10, amp=0.15)
    cv2.rectangle(img, (0, 0), (int(w * 0.12), h), _jitter((150, 60, 10), rng), -1)
    _star_ring(img, (int(w * 0.06), int(h * 0.2)), int(w * 0.04), (40, 210, 250))
    _title(img, "DRIVING LICENCE", int(w * 0.16), int(h * 0.12), w / 620, _jitter((60, 40, 160), rng))
    _portrait(img, rng, int(w * 0.15), int(h * 0.2), int(w * 0.24), int(h * 0.52))
    labels = [f"{i}." for i in range(1, 7)]
    for i, label in enumerate(labels):
        cv2.putText(img, f"{label} {_word(rng)} {_digits(rng, 3)}", (int(w * 0.43), int(h * (0.25 + i * 0.1))), FONT, w / 900, (30, 30, 30), 1, cv2.LINE_AA)
    _signature(img, rng, int(w * 0.16), int(h * 0.78), int(w * 0.25), int(h * 0.15))
    cv2.rectangle(img, (int(w * 0.72), int(h * 0.82)), (int(w * 0.97), int(h * 0.94)), (60, 40, 160), 1)


@register_document("residence-permit", 1.586, "residence permit (ID-1): green, photo right, hologram disc, 3-line MRZ")
def _residence_permit(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((190, 225, 195), rng), _jitter((215, 240, 225), rng), vertical=True)
    _guilloche(img, rng, _jitter((150, 200, 160), rng), 20, amp=0.04)
    _title(img, "RESIDENCE PERMIT", int(w * 0.05), int(h * 0.12), w / 620, _jitter((40, 100, 30), rng))
    _portrait(img, rng, int(w * 0.7), int(h * 0.17), int(w * 0.26), int(h * 0.5))
    cv2.circle(img, (int(w * 0.6), int(h * 0.6)), int(h * 0.09), _jitter((200, 200, 170), rng), -1, cv2.LINE_AA)
    _rosette(img, (int(w * 0.6), int(h * 0.6)), int(h * 0.09), (120, 150, 120), 6)
    _fields(img, rng, int(w * 0.05), int(h * 0.22), ["NAME", "NATIONALITY", "VALID UNTIL"], int(h * 0.12), w / 480, (40, 100, 30))
    _mrz(img, rng, 3, 30)


@register_document("visa", 1.42, "visa sticker (TD2): yellow-orange, grid table, small photo right, 2-line MRZ")
def _visa(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((150, 220, 245), rng), _jitter((120, 190, 250), rng))
    _guilloche(img, rng, _jitter((110, 180, 230), rng), 12, amp=0.2)
    _title(img, "VISA", int(w * 0.05), int(h * 0.13), w / 380, _jitter((20, 60, 140), rng), 3)
    grid = _jitter((30, 90, 160), rng)
    for i in range(5):
        y = int(h * (0.2 + i * 0.09))
        cv2.line(img, (int(w * 0.04), y), (int(w * 0.68), y), grid, 1)
        cv2.putText(img, _word(rng, 3, 8), (int(w * 0.06), y + int(h * 0.065)), FONT, w / 950, (30, 30, 30), 1, cv2.LINE_AA)
    for x in (0.3, 0.5):
        cv2.line(img, (int(w * x), int(h * 0.2)), (int(w * x), int(h * 0.56)), grid, 1)
    _portrait(img, rng, int(w * 0.74), int(h * 0.2), int(w * 0.2), int(h * 0.36), bg=(230, 230, 230))
    _mrz(img, rng, 2, 36, band=(210, 240, 250))


@register_document("health-card", 1.586, "health insurance card (ID-1): teal, chip, no photo, barcode")
def _health_card(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((170, 160, 40), rng), _jitter((210, 200, 120), rng))
    for k in range(4):
        cv2.circle(img, (int(w * 1.05), int(h * -0.1)), int(h * (0.5 + 0.2 * k)), _jitter((190, 185, 90), rng), 2, cv2.LINE_AA)
    _title(img, "HEALTH INSURANCE", int(w * 0.05), int(h * 0.14), w / 600, (255, 255, 255))
    _chip(img, int(w * 0.07), int(h * 0.3), int(w * 0.14), int(h * 0.18))
    _fields(img, rng, int(w * 0.07), int(h * 0.6), ["INSURED PERSON", "CARD NUMBER"], int(h * 0.14), w / 480, (255, 255, 255))
    cv2.putText(img, _digits(rng, 10), (int(w * 0.3), int(h * 0.42)), FONT_BOLD, w / 600, (30, 30, 30), 1, cv2.LINE_AA)
    _barcode(img, rng, int(w * 0.62), int(h * 0.7), int(w * 0.33), int(h * 0.16))


@register_document("student-card", 1.586, "student card (ID-1): white with orange header, photo right, barcode")
def _student_card(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    img[:] = _jitter((245, 245, 245), rng, 8)
    cv2.rectangle(img, (0, 0), (w, int(h * 0.24)), _jitter((30, 130, 245), rng), -1)
    _shield(img, int(w * 0.04), int(h * 0.03), int(h * 0.16), int(h * 0.18), (255, 255, 255), _jitter((20, 80, 180), rng))
    _title(img, "UNIVERSITY", int(w * 0.18), int(h * 0.15), w / 480, (255, 255, 255))
    _portrait(img, rng, int(w * 0.7), int(h * 0.3), int(w * 0.25), int(h * 0.46))
    _fields(img, rng, int(w * 0.05), int(h * 0.36), ["STUDENT", "FACULTY", "VALID UNTIL"], int(h * 0.13), w / 500, (30, 100, 200))
    _barcode(img, rng, int(w * 0.05), int(h * 0.8), int(w * 0.55), int(h * 0.12))


@register_document("vehicle-registration", 1.42, "vehicle registration (TD2-like): grey-violet, no photo, emblem shield, table")
def _vehicle_registration(img: np.ndarray, rng: Rng) -> None:
    h, w = img.shape[:2]
    _gradient(img, _jitter((215, 205, 205), rng), _jitter((230, 215, 225), rng), vertical=True)
    _guilloche(img, rng, _jitter((200, 185, 200), rng), 24, amp=0.03)
    _shield(img, int(w * 0.05), int(h * 0.05), int(h * 0.14), int(h * 0.18), _jitter((120, 40, 110), rng), (40, 20, 40))
    _title(img, "REGISTRATION CERTIFICATE", int(w * 0.17), int(h * 0.14), w / 850, _jitter((110, 40, 100), rng))
    table = (110, 70, 100)
    for i in range(7):
        y = int(h * (0.3 + i * 0.09))
        cv2.line(img, (int(w * 0.05), y), (int(w * 0.95), y), table, 1)
        cv2.putText(img, f"{chr(65 + i)}  {_word(rng, 3, 9)}  {_digits(rng, 4)}", (int(w * 0.07), y + int(h * 0.065)), FONT, w / 900, (35, 30, 35), 1, cv2.LINE_AA)
    cv2.line(img, (int(w * 0.55), int(h * 0.3)), (int(w * 0.55), int(h * 0.93)), table, 1)
