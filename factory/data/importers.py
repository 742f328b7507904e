"""Import existing datasets into a factory dataset (images + manifest).

Each source format is one function registered by name with :func:`register_importer`; it yields
:class:`Candidate` rows (file, label, optional quad and split group) and knows nothing of hashing,
splitting or writing. :func:`import_dataset` does the rest: every image is decoded and hashed, every
problem is gathered and reported at once, and the output folder appears only when all is well.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .._io import atomic_dir
from ..errors import DataError, UnknownNameError
from .cvat import read_cvat
from .manifest import MANIFEST_NAME, DatasetManifest, Record, build_manifest, scan_image

__all__ = ["Candidate", "register_importer", "importer_names", "import_dataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Candidate:
    file: Path  # absolute path of the source image
    rel: str  # path relative to the source root (POSIX)
    label: str | None
    quad: list[list[float]] | None = None
    group: str | None = None


Importer = Callable[..., tuple[list[str] | None, Iterator[Candidate]]]
_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str):
    def deco(fn: Importer) -> Importer:
        _IMPORTERS[name] = fn
        return fn

    return deco


def importer_names() -> list[str]:
    return sorted(_IMPORTERS)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@register_importer("imagefolder")
def _imagefolder(src: Path, annotations: Path | None = None):
    """``SRC/<class>/**/<image>``: the class is the first folder below SRC (torchvision ImageFolder)."""
    class_dirs = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{src} has no class folders", hint="ImageFolder layout is SRC/<class>/<image files>")

    def rows() -> Iterator[Candidate]:
        for d in class_dirs:
            for p in _images_under(d):
                yield Candidate(p, p.relative_to(src).as_posix(), d.name)

    return [d.name for d in class_dirs], rows()


@register_importer("cvat")
def _cvat(src: Path, annotations: Path | None = None):
    """CVAT for images 1.1 XML (``--annotations``); image names are resolved under SRC."""
    if annotations is None:
        raise DataError("the cvat importer needs --annotations PATH/TO/annotations.xml")
    labels, images = read_cvat(annotations)

    def rows() -> Iterator[Candidate]:
        for im in images:
            if im.label is None:
                raise DataError(f"{annotations}: image {im.name!r} has no <tag> or labelled shape; every image needs a class")
            rel = Path(im.name).as_posix()
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise DataError(f"{annotations}: image name {im.name!r} points outside {src}")
            yield Candidate(src / rel, rel, im.label, im.quad)

    return labels or None, rows()


_MIDV_DOC = re.compile(r"^(\d+)_(.+)$")


@register_importer("midv500")
def _midv500(src: Path, annotations: Path | None = None):
    """MIDV-500/2019 layout: ``SRC/NN_type/images/<COND>/*.tif`` + ``ground_truth/<COND>/*.json`` quads.

    The class is the type without its number; frames of one clip (type + condition) share a split.
    The flat template scans directly under ``images/`` are skipped: they are not photographs.
    """
    docs = sorted(d for d in src.iterdir() if d.is_dir() and _MIDV_DOC.match(d.name))
    if not docs:
        raise DataError(f"{src} has no MIDV-500 document folders like '01_alb_id'", hint="point SRC at the folder that holds 01_alb_id/, 02_aut_drvlic_new/, ...")
    classes = sorted({_MIDV_DOC.match(d.name).group(2) for d in docs})

    def rows() -> Iterator[Candidate]:
        for d in docs:
            label = _MIDV_DOC.match(d.name).group(2)
            for cond in sorted(p for p in (d / "images").glob("*") if p.is_dir()):
                for img in _images_under(cond):
                    gt = d / "ground_truth" / cond.name / (img.stem + ".json")
                    quad = None
                    if gt.is_file():
                        try:
                            quad = [[float(x), float(y)] for x, y in json.loads(gt.read_text())["quad"]]
                        except (ValueError, KeyError, TypeError):
                            raise DataError(f"{gt}: malformed MIDV-500 ground truth; expected {{\"quad\": [[x, y] x 4]}}") from None
                    yield Candidate(img, img.relative_to(src).as_posix(), label, quad, group=f"{d.name}/{cond.name}")

    return classes, rows()


def import_dataset(
    kind: str,
    src: str | Path,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    classes: list[str] | None = None,
    copy: bool = True,
    fractions: dict[str, float] | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetManifest:
    if kind not in _IMPORTERS:
        raise UnknownNameError("dataset format", kind, importer_names())
    src = Path(src).resolve()
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist")
    found_classes, rows = _IMPORTERS[kind](src, Path(annotations) if annotations else None)
    records: list[Record] = []
    sources: dict[str, Path] = {}
    problems: list[str] = []
    for c in rows:
        try:
            sha, w, h = scan_image(c.file)
        except DataError as exc:
            problems.append(exc.message)
            continue
        path = f"images/{c.rel}" if copy else c.rel
        records.append(Record(path=path, sha256=sha, label=c.label or "", width=w, height=h, quad=c.quad, group=c.group))
        sources[path] = c.file
        if progress:
            progress(1)
    if problems:
        listing = "\n  - ".join(problems[:20])
        raise DataError(f"{len(problems)} unreadable image(s) in {src}:\n  - {listing}", hint="remove or re-export these files, then import again")
    manifest = build_manifest(
        Path(out).name, records, classes or found_classes, root="." if copy else str(src), fractions=fractions,
        source={"kind": kind, "path": str(src), "annotations": str(annotations) if annotations else None},
    )
    with atomic_dir(out) as tmp:
        if copy:
            for path, file in sources.items():
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, tmp / path)
        manifest.save(tmp / MANIFEST_NAME)
    manifest.location = Path(out) / MANIFEST_NAME
    return manifest
