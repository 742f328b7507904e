"""Objects in a frame, for detection: a class and a box per object (and the document's quad when the
source has one). A frame without objects is a valid negative. Boxes are checked against the image they
belong to before anything is written: outside the image, degenerate or not numbers is a problem.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SLACK_PX", "box_of", "check_objects", "object_labels", "ANNOTATIONS"]

SLACK_PX = 1.0  # annotation tools round: a box may pass the image border by this much
# What a dataset record must carry for each task (factory.tasks declares the same per task; a test checks)
ANNOTATIONS = {"classification": "label", "document-localisation": "quad", "detection": "boxes"}


def box_of(points) -> list[float]:
    """The axis-aligned box [x1, y1, x2, y2] around polygon points, in pixels."""
    a = np.asarray(points, np.float64).reshape(-1, 2)
    return [round(float(v), 2) for v in (a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max())]


def object_labels(objects: list[dict] | None, label: str) -> list[str]:
    """The class names a record speaks for: its objects' (detection) or its own label."""
    return [o["label"] for o in objects] if objects is not None else [label]


def check_objects(
    objects: list[dict], width: int, height: int, classes: list[str] | None, where: str, source: str | None = None
) -> list[str]:
    """Every problem of one image's objects, each naming ``where`` (the image), and the object's own line
    in the annotation file ``source`` (CVAT) or its entry (COCO) when known."""
    problems = []
    known = set(classes) if classes else None
    for i, o in enumerate(objects):
        if o.get("line") and source:
            at = f"{source}:{o['line']}: {where}: object {i + 1}"
        else:
            at = f"{where}: object {i + 1}" + (f" ({o['entry']})" if o.get("entry") else "")
        box = o.get("box")
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError):
            problems.append(f"{at}: box {box!r} is not four numbers x1, y1, x2, y2")
            continue
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            problems.append(f"{at}: box {box} has a value that is not a finite number")
        elif x2 - x1 < 1 or y2 - y1 < 1:
            problems.append(f"{at}: degenerate box {box} ({x2 - x1:g} x {y2 - y1:g} px; at least 1 x 1)")
        elif x1 < -SLACK_PX or y1 < -SLACK_PX or x2 > width + SLACK_PX or y2 > height + SLACK_PX:
            problems.append(f"{at}: box {box} extends outside the {width}x{height} image")
        if known is not None and o.get("label") not in known:
            problems.append(f"{at}: label {o.get('label')!r} is not in the class list {sorted(known)}")
    return problems
