"""CVAT "for images 1.1" XML: write what the generator draws, read what annotators made.

Class labels come from ``<tag>`` elements (one per image); document quads from a 4-point
``<polygon>`` or ``<points>`` shape. Parsing problems name the file and the line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write
from ..errors import DataError

__all__ = ["CvatImage", "write_cvat", "read_cvat", "cvat_xml"]

_PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe"]


@dataclass
class CvatImage:
    name: str
    width: int
    height: int
    label: str | None
    quad: list[list[float]] | None


def _points(quad: list[list[float]]) -> str:
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in quad)


def cvat_xml(images: list[CvatImage], classes: list[str], task_name: str = "factory") -> bytes:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for i, name in enumerate(classes):
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = name
        ET.SubElement(lab, "color").text = _PALETTE[i % len(_PALETTE)]
        ET.SubElement(lab, "type").text = "any"
        ET.SubElement(lab, "attributes")
    for i, im in enumerate(images):
        el = ET.SubElement(root, "image", id=str(i), name=im.name, width=str(im.width), height=str(im.height))
        if im.label is not None:
            ET.SubElement(el, "tag", label=im.label, source="manual")
        if im.quad is not None:
            ET.SubElement(el, "polygon", label=im.label or "document", source="manual", occluded="0",
                          points=_points(im.quad), z_order="0")
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def write_cvat(path: str | Path, images: list[CvatImage], classes: list[str], task_name: str = "factory") -> Path:
    return atomic_write(path, cvat_xml(images, classes, task_name))


def _parse_points(text: str, where: str) -> list[list[float]]:
    try:
        pts = [[float(v) for v in p.split(",")] for p in text.strip().split(";") if p.strip()]
    except ValueError:
        raise DataError(f"{where}: points {text!r} are not 'x,y;x,y;...' numbers") from None
    if len(pts) != 4 or any(len(p) != 2 for p in pts):
        raise DataError(f"{where}: a document quad needs exactly 4 points, got {len(pts)}")
    return pts


def read_cvat(path: str | Path) -> tuple[list[str], list[CvatImage]]:
    """Return (declared labels, images). Raise DataError for malformed or truncated XML."""
    path = Path(path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DataError(f"CVAT file {path} does not exist") from None
    except ET.ParseError as exc:
        raise DataError(
            f"{path}: malformed CVAT XML ({exc})",
            hint="the file may be truncated; export it again from CVAT as 'CVAT for images 1.1'",
        ) from None
    root = tree.getroot()
    if root.tag != "annotations":
        raise DataError(f"{path}: root element is <{root.tag}>, expected <annotations> (CVAT for images 1.1)")
    version = root.findtext("version")
    if version is not None and version.strip() != "1.1":
        raise DataError(f"{path}: CVAT format version {version!r}; only 'CVAT for images 1.1' is supported")
    labels = [lab.findtext("name", "").strip() for lab in root.iter("label")]
    labels = [x for x in labels if x]
    images: list[CvatImage] = []
    for el in root.findall("image"):
        name = el.get("name")
        where = f"{path}: <image id={el.get('id')!r} name={name!r}>"
        if not name:
            raise DataError(f"{where}: missing 'name' attribute")
        try:
            width, height = int(el.get("width", "0")), int(el.get("height", "0"))
        except ValueError:
            raise DataError(f"{where}: width/height are not integers") from None
        tags = [t.get("label") for t in el.findall("tag")]
        if len(tags) > 1:
            raise DataError(f"{where}: {len(tags)} tags; a classification image needs exactly one")
        quad = None
        shapes = el.findall("polygon") + el.findall("points")
        if shapes:
            quad = _parse_points(shapes[0].get("points", ""), where)
        label = tags[0] if tags else (shapes[0].get("label") if shapes else None)
        images.append(CvatImage(name=name, width=width, height=height, label=label, quad=quad))
    if not images:
        raise DataError(f"{path}: no <image> elements", hint="was the task exported with 'CVAT for images 1.1'?")
    return labels, images
