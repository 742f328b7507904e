"""Import existing datasets into a factory dataset (images + manifest).

Each source format is one function registered by name with :func:`register_importer`; it yields
:class:`Candidate` rows (file, label, optional quad, objects and split group, and where in the
annotation file they come from) and knows nothing of hashing, splitting or writing.
:func:`import_dataset` does the rest: every image is decoded and hashed, its annotation is checked
for the task the dataset is for (a label; one quad of four points; boxes inside the image), every
problem is gathered and reported at once with its file and line, and the output folder appears only
when all is well.
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
from .objects import ANNOTATIONS, check_objects

__all__ = ["Candidate", "register_importer", "importer_names", "import_dataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Candidate:
    file: Path  # absolute path of the source image
    rel: str  # path relative to the source root (POSIX)
    label: str | None
    quad: list[list[float]] | None = None
    group: str | None = None
    objects: list[dict] | None = None  # detection: [{"label", "box": [x1, y1, x2, y2], "line"?}]
    where: str = ""  # file:line (or file: entry) of the annotation, for problems
    polygons: list[dict] | None = None  # every polygon as annotated ({"points", "line"}), when the source has them
    problems: list[str] | None = None  # found while reading the annotation
    source: str | None = None  # the annotation file (objects and polygons carry their line in it)


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
            rel = Path(im.name).as_posix()
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise DataError(f"{annotations}:{im.line}: image name {im.name!r} points outside {src}")
            yield Candidate(src / rel, rel, im.label, im.quad, objects=im.objects, where=f"{annotations}:{im.line}",
                            polygons=im.polygons, problems=im.problems, source=str(annotations))  # fmt: skip

    return labels or None, rows()


def _coco_json(annotations: Path) -> dict:
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"COCO file {annotations} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{annotations}: not valid JSON ({exc})", hint="the file may be truncated; export it again") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{annotations}: a COCO detection file has lists 'images', 'annotations' and 'categories'")
    return data


@register_importer("coco")
def _coco(src: Path, annotations: Path | None = None):
    """COCO detection JSON (``--annotations instances.json``): ``bbox`` is [x, y, width, height] in pixels;
    crowd regions (``iscrowd: 1``) are left out, as COCO's own evaluation ignores them. Problems name the
    entry (``annotations[17]``) of the file."""
    if annotations is None:
        raise DataError("the coco importer needs --annotations PATH/TO/instances.json")
    data = _coco_json(annotations)
    categories, images, objects = {}, {}, {}
    problems: dict[object, list[str]] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or "id" not in c:
            raise DataError(f"{annotations}: categories[{i}] needs an 'id' and a 'name'")
        categories[c["id"]] = c["name"]
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            raise DataError(f"{annotations}: images[{i}] needs an 'id' and a 'file_name'")
        images[im["id"]] = (i, im)
        objects[im["id"]] = []
    for i, a in enumerate(data["annotations"]):
        at = f"{annotations}: annotations[{i}] (id {a.get('id') if isinstance(a, dict) else '?'})"
        if not isinstance(a, dict) or a.get("image_id") not in images:
            problems.setdefault(None, []).append(f"{at}: image_id {a.get('image_id') if isinstance(a, dict) else a!r} "
                                                 "is not among the images")  # fmt: skip
            continue
        if a.get("iscrowd"):
            continue
        bbox = a.get("bbox")
        if a.get("category_id") not in categories:
            problems.setdefault(a["image_id"], []).append(f"{at}: category_id {a.get('category_id')!r} is not declared")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            problems.setdefault(a["image_id"], []).append(f"{at}: bbox {bbox!r} is not [x, y, width, height]")
        else:
            x, y, w, h = (float(v) for v in bbox)
            objects[a["image_id"]].append({"label": categories[a["category_id"]], "box": [x, y, x + w, y + h],
                                           "entry": f"annotations[{i}]"})  # fmt: skip

    def rows() -> Iterator[Candidate]:
        if None in problems:
            yield Candidate(annotations, "", None, problems=problems[None])
        for image_id, (i, im) in images.items():
            rel = Path(im["file_name"]).as_posix()
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise DataError(f"{annotations}: images[{i}]: file_name {im['file_name']!r} points outside {src}")
            yield Candidate(src / rel, rel, None, objects=objects[image_id], where=f"{annotations}: images[{i}]",
                            problems=problems.get(image_id))  # fmt: skip

    return list(categories.values()), rows()  # the file's order of categories is the class index order


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


def _annotation_problems(c: Candidate, annotation: str, width: int, height: int, classes: list[str] | None) -> list[str]:
    """What is wrong with one image's annotation for a task that needs ``annotation``."""
    where = c.where or str(c.file)
    if annotation == "boxes":
        if c.objects is None:
            return [f"{where}: {c.rel}: no boxes or polygons (a frame without objects must still be listed)"]
        return check_objects(c.objects, width, height, classes, c.rel if c.source else f"{where}: {c.rel}", c.source)
    problems = []
    if c.label is None:
        problems.append(f"{where}: {c.rel}: no <tag> or labelled shape; every image needs a class")
    polygons = c.polygons or []
    bad = [p for p in polygons if len(p["points"]) != 4]
    problems += [
        f"{c.source}:{p['line']}: {c.rel}: a document quad needs exactly 4 points, got {len(p['points'])}"
        for p in bad
    ]  # fmt: skip
    if annotation == "quad" and not bad and c.quad is None:
        problems.append(f"{where}: {c.rel}: " + (f"{len(polygons)} polygons; one document quad per image" if polygons
                                                 else "no document quad (a polygon of 4 points)"))  # fmt: skip
    return problems


def import_dataset(
    kind: str,
    src: str | Path,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    classes: list[str] | None = None,
    copy: bool = True,
    fractions: dict[str, float] | None = None,
    task: str = "classification",
    progress: Callable[[int], None] | None = None,
) -> DatasetManifest:
    """Import FORMAT ``kind`` at ``src`` as a dataset for ``task`` (its annotation is checked per image)."""
    if kind not in _IMPORTERS:
        raise UnknownNameError("dataset format", kind, importer_names())
    if task not in ANNOTATIONS:
        raise UnknownNameError("task", task, sorted(ANNOTATIONS))
    annotation = ANNOTATIONS[task]
    src = Path(src).resolve()
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist")
    found_classes, rows = _IMPORTERS[kind](src, Path(annotations) if annotations else None)
    class_list = classes or found_classes
    records: list[Record] = []
    sources: dict[str, Path] = {}
    problems: list[str] = []
    for c in rows:
        problems += c.problems or []
        if not c.rel:  # a row that only carries problems of the annotation file
            continue
        try:
            sha, w, h = scan_image(c.file)
        except DataError as exc:
            problems.append(exc.message)
            continue
        problems += _annotation_problems(c, annotation, w, h, class_list)
        path = f"images/{c.rel}" if copy else c.rel
        objects = None
        if annotation == "boxes":
            objects = [{k: v for k, v in o.items() if k in ("label", "box", "quad")} for o in c.objects or []]
        records.append(Record(path=path, sha256=sha, label=(c.label or "") if annotation != "boxes" else "", width=w,
                              height=h, quad=c.quad, group=c.group, objects=objects))  # fmt: skip
        sources[path] = c.file
        if progress:
            progress(1)
    if problems:
        listing = "\n  - ".join(problems[:30]) + (f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else "")
        raise DataError(
            f"{len(problems)} problem(s) importing {src} for {task}:\n  - {listing}",
            hint="fix these annotations or files, then import again (nothing was written)",
        )
    manifest = build_manifest(
        Path(out).name, records, class_list, root="." if copy else str(src), fractions=fractions,
        source={"kind": kind, "path": str(src), "annotations": str(annotations) if annotations else None, "task": task},
    )
    with atomic_dir(out) as tmp:
        if copy:
            for path, file in sources.items():
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, tmp / path)
        manifest.save(tmp / MANIFEST_NAME)
    manifest.location = Path(out) / MANIFEST_NAME
    return manifest
