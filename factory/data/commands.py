"""``factory data ...``: make, import and profile datasets."""

from __future__ import annotations

import json

import click

from .. import progress
from ..errors import InputError

__all__ = ["data"]


def _fractions(value: str | None) -> dict[str, float] | None:
    from .manifest import parse_fractions

    return None if value is None else parse_fractions(value)


def _summary(manifest) -> str:
    if manifest.detection:
        per_split = ", ".join(f"{s} {len(manifest.subset(s))}" for s in ("train", "val", "test"))
        objects = sum(len(r.objects or []) for r in manifest.files)
        empty = sum(manifest.negatives().values())
        return (f"{len(manifest.files)} frames ({per_split}), {objects} objects of {len(manifest.classes)} classes, "
                f"{empty} frames without objects; dataset hash {manifest.dataset_hash}")  # fmt: skip
    counts = manifest.counts()
    per_split = ", ".join(f"{s} {sum(counts[s].values())}" for s in counts)
    return f"{len(manifest.files)} images, {len(manifest.classes)} classes ({per_split}); dataset hash {manifest.dataset_hash}"


@click.group()
def data() -> None:
    """Make, import and profile datasets (images + dataset.json).

    A dataset folder holds its images and a manifest listing every file with its sha256, label,
    split (train/val/test, decided by hash so adding files never reshuffles old ones) and the
    document quad when known, plus the class list and one dataset hash.
    """


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write (replaced atomically).")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--per-class", default=300, show_default=True, help="Images per document type.")
@click.option("--size", default="256x192", show_default=True, help="Image size WIDTHxHEIGHT.")
@click.option("--types", default=None, help="Comma-separated document types (default: all; see `factory data types`).")
@click.option("--split", default=None, help="train,val,test fractions [default: 0.6,0.2,0.2].")
@click.option("--frames", default=None, type=int,
              help="Detection: write this many frames with 0..--max-objects documents each (boxes), not one per image.")
@click.option("--max-objects", default=3, show_default=True, help="Detection: most documents in one frame.")
def synth_cmd(out: str, seed: int, per_class: int, size: str, types: str | None, split: str | None,
              frames: int | None, max_objects: int) -> None:  # fmt: skip
    """Generate MIDV-500-style photos of identity documents.

    Each image is a document of one of several types (ID card, passport, driving licence, ...)
    warped by a random perspective onto a cluttered background, with uneven light, glare, blur,
    noise and JPEG artefacts. Writes images/, annotations.xml (CVAT for images 1.1: a tag with the
    type and a polygon with the four corners per image) and dataset.json.

    With --frames N, writes N detection frames instead: 0 to --max-objects smaller documents per
    frame (about one frame in seven has none: a valid negative), each with its box and its quad
    (CVAT boxes and polygons).

    \b
    Examples:
      factory data synth --out data/synth --per-class 300 --seed 0
      factory data synth --out data/frames --frames 2000 --size 160x128 --types id-card,passport,visa
    """
    from .synth import parse_size, synthesize, synthesize_frames

    classes = [t.strip() for t in types.split(",")] if types else None
    if frames is not None:
        with progress.bar("synthesizing frames", frames) as tick:
            manifest = synthesize_frames(out, seed=seed, frames=frames, size=parse_size(size), classes=classes,
                                         max_objects=max_objects, fractions=_fractions(split), progress=tick)  # fmt: skip
        click.echo(f"wrote {out}: {_summary(manifest)}")
        return
    n_types = len(classes) if classes else None
    if n_types is None:
        from .documents import document_types

        n_types = len(document_types())
    with progress.bar("synthesizing", per_class * n_types) as tick:
        manifest = synthesize(out, seed=seed, per_class=per_class, size=parse_size(size), classes=classes,
                              fractions=_fractions(split), progress=tick)
    click.echo(f"wrote {out}: {_summary(manifest)}")


@data.command("types")
def types_cmd() -> None:
    """List the synthetic document types."""
    from .documents import document_types, get_document

    for name in document_types():
        click.echo(f"{name:22s} {get_document(name).description}")


@data.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["imagefolder", "cvat", "coco", "midv500"]))
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write (replaced atomically).")
@click.option("--annotations", type=click.Path(dir_okay=False),
              help="CVAT for images 1.1 XML (format cvat) or COCO detection JSON (format coco).")
@click.option("--task", default=None, type=click.Choice(["classification", "document-localisation", "detection"]),
              help="What the dataset is for; its annotation is checked per image [default: detection for coco, "
              "else classification].")
@click.option("--classes", default=None, help="Comma-separated class list, in index order (default: from the source).")
@click.option("--reference", is_flag=True, help="Do not copy images; the manifest points at SRC.")
@click.option("--split", default=None, help="train,val,test fractions [default: 0.6,0.2,0.2].")
def import_cmd(fmt: str, src: str, out: str, annotations: str | None, task: str | None, classes: str | None,
               reference: bool, split: str | None) -> None:  # fmt: skip
    """Import a dataset from FORMAT at SRC.

    \b
    imagefolder  SRC/<class>/<images>                      (torchvision ImageFolder)
    cvat         images under SRC + --annotations XML      (tags = classes, polygons = quads,
                                                            boxes (or polygons) = objects with --task detection)
    coco         images under SRC + --annotations JSON     (COCO detection: bbox = [x, y, w, h])
    midv500      SRC/01_alb_id/images/CA/CA01_01.tif ...   (frames of one clip share a split)

    Every image is decoded and hashed and its annotation checked for --task: a class
    (classification), one quad of 4 points (document-localisation), boxes inside the image and not
    degenerate, of declared classes (detection; a frame without objects is a valid negative). All
    problems (corrupt images, annotation errors with their file and line, labels not in the class
    list, empty classes) are reported together and nothing is written unless the import is clean.

    \b
    Example: factory data import coco photos/ --annotations instances.json --out data/parts
    """
    from .importers import import_dataset

    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if fmt in ("cvat", "coco") and not annotations:
        raise InputError(f"format {fmt} needs --annotations PATH/TO/" + ("annotations.xml" if fmt == "cvat" else "instances.json"))
    task = task or ("detection" if fmt == "coco" else "classification")
    with progress.bar("importing", 0) as tick:
        manifest = import_dataset(fmt, src, out, annotations=annotations, classes=class_list, copy=not reference,
                                  fractions=_fractions(split), task=task, progress=tick)  # fmt: skip
    click.echo(f"wrote {out}: {_summary(manifest)}")


@data.command("report")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (profile.json, class_balance.png, samples.png).")
@click.option("--samples-per-class", default=6, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Also print the profile JSON on stdout.")
def report_cmd(dataset: str, out: str, samples_per_class: int, as_json: bool) -> None:
    """Profile DATASET (a folder with dataset.json): the EDA step.

    Class counts per split, image sizes, brightness/contrast statistics and reference histograms,
    per-class means (a class that is simply darker is a shortcut), duplicates by content hash.
    """
    from .manifest import load_manifest
    from .profile import write_report

    manifest = load_manifest(dataset)
    with progress.bar("profiling", len(manifest.files)) as tick:
        profile = write_report(manifest, out, samples_per_class=samples_per_class, progress=tick)
    if as_json:
        click.echo(json.dumps(profile, indent=2))
    dup = profile["duplicates"]
    click.echo(
        f"wrote {out}: {profile['images']} images, imbalance ratio {profile['imbalance_ratio']}, "
        f"brightness mean {profile['brightness']['mean']:.1f}, contrast mean {profile['contrast']['mean']:.1f}, "
        f"{dup['extra_copies']} duplicate copies ({len(dup['across_splits'])} across splits)"
    )
