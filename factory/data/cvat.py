"""CVAT "for images 1.1" XML: write what the generator draws, read what annotators made.

Class labels come from ``<tag>`` elements (one per image); document quads from a 4-point
``<polygon>`` or ``<points>`` shape; detection objects from ``<box>`` elements (and from polygons, by
their bounds, when a frame has no boxes). Every shape keeps its line in the file, so problems found
later (a box outside its image, a label nobody declared) name the file and the line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass, field
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
    objects: list[dict] | None = None  # detection: [{"label", "box", "quad"?, "line"?}]
    line: int = 0  # of the <image> element, when read from a file
    polygons: list[dict] = field(default_factory=list)  # every polygon as read: {"label", "points", "line"}
    problems: list[str] = field(default_factory=list)  # shape-level problems, each with file:line


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
        for z, o in enumerate(im.objects or []):
            x1, y1, x2, y2 = o["box"]
            ET.SubElement(el, "box", label=o["label"], source="manual", occluded="0", xtl=f"{x1:.2f}", ytl=f"{y1:.2f}",
                          xbr=f"{x2:.2f}", ybr=f"{y2:.2f}", z_order=str(z))  # fmt: skip
            if o.get("quad") is not None:
                ET.SubElement(el, "polygon", label=o["label"], source="manual", occluded="0", points=_points(o["quad"]),
                              z_order=str(z))  # fmt: skip
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def write_cvat(path: str | Path, images: list[CvatImage], classes: list[str], task_name: str = "factory") -> Path:
    return atomic_write(path, cvat_xml(images, classes, task_name))


def _parse_points(text: str, where: str) -> list[list[float]]:
    try:
        pts = [[float(v) for v in p.split(",")] for p in text.strip().split(";") if p.strip()]
    except ValueError:
        raise DataError(f"{where}: points {text!r} are not 'x,y;x,y;...' numbers") from None
    if any(len(p) != 2 for p in pts):
        raise DataError(f"{where}: points {text!r} are not 'x,y;x,y;...' pairs")
    return pts


def _start_lines(path: Path) -> list[int]:
    """The line of every element's start tag, in document order (ElementTree keeps no positions)."""
    lines: list[int] = []
    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = lambda _name, _attrs: lines.append(parser.CurrentLineNumber)
    with open(path, "rb") as f:
        parser.ParseFile(f)
    return lines


def _box(el: ET.Element, where: str) -> list[float]:
    try:
        return [float(el.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr")]
    except ValueError:
        raise DataError(f"{where}: box corners xtl/ytl/xbr/ybr are not numbers") from None


def _image(el: ET.Element, path: Path, line_of: dict[int, int]) -> CvatImage:
    from .objects import box_of

    name = el.get("name")
    where = f"{path}:{line_of.get(id(el), 0)}: <image id={el.get('id')!r} name={name!r}>"
    if not name:
        raise DataError(f"{where}: missing 'name' attribute")
    try:
        width, height = int(el.get("width", "0")), int(el.get("height", "0"))
    except ValueError:
        raise DataError(f"{where}: width/height are not integers") from None
    tags = [t.get("label") for t in el.findall("tag")]
    if len(tags) > 1:
        raise DataError(f"{where}: {len(tags)} tags; a classification image needs exactly one")
    problems, polygons, boxes = [], [], []
    for shape in el.findall("polygon") + el.findall("points"):
        at = f"{path}:{line_of.get(id(shape), 0)}"
        try:
            polygons.append({"label": shape.get("label"), "points": _parse_points(shape.get("points", ""), at),
                             "line": line_of.get(id(shape), 0)})  # fmt: skip
        except DataError as exc:
            problems.append(exc.message)
    for shape in el.findall("box"):
        at = f"{path}:{line_of.get(id(shape), 0)}"
        try:
            boxes.append({"label": shape.get("label"), "box": _box(shape, at), "line": line_of.get(id(shape), 0)})
        except DataError as exc:
            problems.append(exc.message)
    four = [p for p in polygons if len(p["points"]) == 4]
    quad = four[0]["points"] if len(polygons) == 1 and four else None
    objects = boxes or [{"label": p["label"], "box": box_of(p["points"]), "line": p["line"]} for p in polygons
                        if len(p["points"]) >= 3]  # fmt: skip
    label = tags[0] if tags else (polygons[0]["label"] if len(polygons) == 1 else None)
    return CvatImage(name=name, width=width, height=height, label=label, quad=quad, objects=objects,
                     line=line_of.get(id(el), 0), polygons=polygons, problems=problems)  # fmt: skip


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
    line_of = {id(el): line for el, line in zip(root.iter(), _start_lines(path))}
    labels = [lab.findtext("name", "").strip() for lab in root.iter("label")]
    labels = [x for x in labels if x]
    images = [_image(el, path, line_of) for el in root.findall("image")]
    if not images:
        raise DataError(f"{path}: no <image> elements", hint="was the task exported with 'CVAT for images 1.1'?")
    return labels, images
