"""A new dataset version from corrected field captures: the parent's files, unchanged and in the same
splits, plus the captures as a named slice.

Splits are decided by content hash with the parent's fractions, so no old file moves; the field slice
(``field:<capture set>``) is split the same way and so has its own test part, which the loop's gate judges
apart from the old test split. The manifest's ``source`` names the parent dataset (hash and path) and the
capture set; every problem of the annotation file (a frame without a class, a class the parent does not
have, an unreadable image) is reported at once, and nothing is written unless all is well.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .._io import atomic_dir, read_json
from ..data.cvat import read_cvat
from ..data.manifest import MANIFEST_NAME, DatasetManifest, Record, build_manifest, load_manifest, scan_image
from ..data.objects import check_objects
from ..errors import DataError
from .captures import CAPTURES_NAME

__all__ = ["new_version", "field_slice"]


def field_slice(capture_set: str) -> str:
    """The name of a capture set's slice in a dataset version."""
    return f"field:{capture_set}"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same bytes, no copy (a dataset version never edits a file)
    except OSError:
        shutil.copyfile(src, dst)


def new_version(parent: str | Path, task_dir: str | Path, out: str | Path, *, annotations: str | Path | None = None,
                name: str | None = None) -> DatasetManifest:  # fmt: skip
    """Write dataset version ``out``: ``parent``'s files plus the annotated captures of ``task_dir`` (a folder
    from :func:`~factory.loop.captures.export_captures`, its ``annotations.xml`` corrected, or ``annotations``)."""
    base = load_manifest(parent)
    task_dir = Path(task_dir)
    meta = read_json(task_dir / CAPTURES_NAME) if (task_dir / CAPTURES_NAME).is_file() else {}
    capture_set = meta.get("capture_set") or task_dir.name
    xml = Path(annotations) if annotations else task_dir / "annotations.xml"
    _, images = read_cvat(xml)
    slice_name = field_slice(capture_set)
    problems, new, files = [], [], {}
    known = set(base.classes)
    for im in images:
        where = f"{xml}:{im.line}: {im.name}"
        problems += im.problems
        rel = Path(im.name)
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(f"{where}: the image name points outside {task_dir}")
            continue
        try:
            sha, w, h = scan_image(task_dir / rel)
        except DataError as exc:
            problems.append(exc.message)
            continue
        path = f"images/{slice_name.replace(':', '-')}/{rel.name}"
        files[path] = task_dir / rel
        if base.detection:
            problems += check_objects(im.objects or [], w, h, base.classes, im.name, str(xml))
            objects = [{"label": o["label"], "box": o["box"]} for o in im.objects or []]
            new.append(Record(path, sha, "", w, h, objects=objects, slice=slice_name))
        elif im.label is None:
            problems.append(f"{where}: no class (a <tag>); an annotator must give every captured frame its class")
        elif im.label not in known:
            problems.append(f"{where}: class {im.label!r} is not one of the parent dataset's {base.classes}")
        else:
            new.append(Record(path, sha, im.label, w, h, slice=slice_name))
    if problems:
        listing = "\n  - ".join(problems[:30])
        raise DataError(
            f"{len(problems)} problem(s) in the annotated captures:\n  - {listing}",
            hint="correct them in the annotation tool, export again, and retry (nothing was written)",
        )
    if not new:
        raise DataError(f"{xml} holds no annotated frames")
    old = [Record(**{**r.__dict__, "split": ""}) for r in base.files]
    source = {
        "kind": "version",
        "parent": {"dataset_hash": base.dataset_hash, "path": str(base.location), "name": base.name},
        "capture_set": capture_set,
        "field_slice": slice_name,
        "captures": len(new),
        "simulated_annotation": bool(meta.get("simulated_annotation")),
        "rollout": meta.get("rollout"),
    }
    manifest = build_manifest(name or Path(out).name, old + new, base.classes, fractions=base.split, source=source)
    sources = {r.path: base.resolve(r) for r in base.files} | files
    with atomic_dir(out) as tmp:
        for path, src in sources.items():
            _link(src, tmp / path)
        manifest.save(tmp / MANIFEST_NAME)
    manifest.location = Path(out) / MANIFEST_NAME
    return manifest
