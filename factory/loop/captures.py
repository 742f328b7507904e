"""Field captures out of the registry and into an annotation tool: a CVAT for images 1.1 task.

``export_captures`` writes ``images/<id>.jpg``, ``annotations.xml`` with the model's own outputs as
pre-annotations (a tag with the predicted class; for detection a box per detection), and
``captures.json`` with every capture's metadata (device, release, rollout, window, reason, output) and
the capture set's id: the sha256 of its images, so the same captures are the same set wherever they go.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .._io import atomic_dir, write_json
from ..data.cvat import CvatImage, write_cvat
from ..errors import InputError

__all__ = ["capture_set_id", "export_captures", "CAPTURES_NAME"]

CAPTURES_NAME = "captures.json"


def capture_set_id(captures: list[dict]) -> str:
    """A capture set's id: its images' hashes, sorted, hashed (16 hex digits)."""
    return hashlib.sha256("\n".join(sorted(c["sha256"] for c in captures)).encode()).hexdigest()[:16]


def _pre_annotation(c: dict, labels: list[str], width: int, height: int) -> CvatImage:
    out = c.get("output")
    name = f"images/capture-{c['id']:06d}.jpg"
    if isinstance(out, dict) and out.get("label") in labels:  # classification: the predicted class
        return CvatImage(name, width, height, out["label"], None)
    if isinstance(out, list):  # detection: one box per detection, in the frame's pixels
        objects = [
            {"label": d["label"], "box": [d["box"][0] * width, d["box"][1] * height, d["box"][2] * width,
                                          d["box"][3] * height]}
            for d in out
            if isinstance(d, dict) and d.get("label") in labels and isinstance(d.get("box"), list)
        ]  # fmt: skip
        return CvatImage(name, width, height, None, None, objects=objects)
    return CvatImage(name, width, height, None, None)


def export_captures(client, out: str | Path, *, rollout: str | None = None, release: str | None = None,
                    labels: list[str] | None = None) -> dict:  # fmt: skip
    """Download the captures (of one rollout or release) into a CVAT task folder; returns its summary."""
    captures = client.call(
        "GET", "/v1/captures", params={k: v for k, v in (("rollout", rollout), ("release", release)) if v}
    )
    captures = captures["captures"]
    if not captures:
        raise InputError(
            "no captures to export" + (f" for rollout {rollout!r}" if rollout else ""),
            hint="captures exist only where a rollout plan has a capture block and its devices met its conditions",
        )
    labels = labels or sorted(
        {(c.get("output") or {}).get("label") for c in captures if isinstance(c.get("output"), dict)} - {None}
    )
    set_id = capture_set_id(captures)
    images = []
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for c in captures:
            data = client.request("GET", f"/v1/captures/{c['id']}/image").content
            if hashlib.sha256(data).hexdigest() != c["sha256"]:
                raise InputError(f"capture {c['id']}: the image the registry sent does not match its sha256")
            (tmp / f"images/capture-{c['id']:06d}.jpg").write_bytes(data)
            images.append(_pre_annotation(c, labels, c["width"], c["height"]))
        write_cvat(tmp / "annotations.xml", images, labels, task_name=f"field-captures-{set_id}")
        summary = {
            "schema": "factory.captures/1",
            "capture_set": set_id,
            "rollout": rollout,
            "release": release,
            "labels": labels,
            "pre_annotations": "the model's own outputs: correct them, then export as CVAT for images 1.1",
            "captures": captures,
        }
        write_json(tmp / CAPTURES_NAME, summary)
    return summary
