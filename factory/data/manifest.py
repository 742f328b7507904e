"""The dataset manifest: every file with its sha256, label, split and quad; the class list; one hash.

Splits are decided by hashing (the file's content hash, or its group key when the source groups
frames, e.g. one MIDV-500 clip), so adding files never moves an old file to another split, and
near-identical frames of one clip never straddle train and test.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .._io import canonical_json, read_json, sha256_bytes, write_json
from ..errors import DataError, InputError
from .objects import object_labels

__all__ = [
    "SCHEMA",
    "DEFAULT_SPLIT",
    "Record",
    "DatasetManifest",
    "split_of",
    "scan_image",
    "build_manifest",
    "load_manifest",
    "parse_fractions",
]

SCHEMA = "factory.dataset/1"
MANIFEST_NAME = "dataset.json"  # not manifest.json: that name is the bundle manifest's
DEFAULT_SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}
SPLITS = ("train", "val", "test")


@dataclass
class Record:
    path: str  # relative to the manifest's root, POSIX separators
    sha256: str
    label: str
    width: int
    height: int
    split: str = ""
    quad: list[list[float]] | None = None  # four corners TL, TR, BR, BL in pixels
    group: str | None = None  # frames sharing a group share a split
    objects: list[dict] | None = None  # detection: [{"label", "box": [x1, y1, x2, y2] px, "quad"?}]; [] = negative
    slice: str | None = None  # a named part of the set, e.g. "field:<capture set>" (its test part is judged apart)

    @property
    def labels(self) -> list[str]:
        """The classes this image speaks for: its objects' (detection) or its one label."""
        return object_labels(self.objects, self.label)


@dataclass
class DatasetManifest:
    name: str
    classes: list[str]
    files: list[Record]
    root: str = "."
    split: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLIT))
    source: dict = field(default_factory=dict)
    location: Path | None = None  # where the manifest was loaded from (not serialised)

    @property
    def dataset_hash(self) -> str:
        rows = sorted(
            (r.path, r.sha256, r.label, r.split)
            + (() if r.objects is None else (canonical_json(r.objects).decode(),))
            + (() if r.slice is None else (f"slice:{r.slice}",))
            for r in self.files
        )
        return hashlib.sha256(canonical_json({"classes": self.classes, "files": rows})).hexdigest()

    @property
    def root_dir(self) -> Path:
        base = self.location.parent if self.location else Path(".")
        return (base / self.root).resolve()

    def resolve(self, rec: Record) -> Path:
        return self.root_dir / rec.path

    def subset(self, split: str, slice: str | None = "*") -> list[Record]:
        """Records of ``split`` (and of ``slice``: "*" any, None the records of no slice, or a slice's name)."""
        return [r for r in self.files if r.split == split and (slice == "*" or r.slice == slice)]

    def slices(self) -> list[str]:
        """The named slices of the set (e.g. field captures), sorted."""
        return sorted({r.slice for r in self.files if r.slice})

    @property
    def detection(self) -> bool:
        """Frames with objects (boxes), not one label per image."""
        return any(r.objects is not None for r in self.files)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split and class: images (one label each), or objects for a detection set."""
        out = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for r in self.files:
            for label in r.labels:
                out[r.split][label] += 1
        return out

    def negatives(self) -> dict[str, int]:
        """Per split: frames without any object (valid negatives of a detection set)."""
        return {s: sum(1 for r in self.files if r.split == s and r.objects == []) for s in SPLITS}

    def to_dict(self) -> dict:
        files = []
        for r in sorted(self.files, key=lambda r: r.path):
            d = asdict(r)
            files.append({k: v for k, v in d.items() if v is not None})
        return {
            "schema": SCHEMA,
            "name": self.name,
            "root": self.root,
            "classes": self.classes,
            "split": self.split,
            "source": self.source,
            "dataset_hash": self.dataset_hash,
            "counts": self.counts(),
            **({"negatives": self.negatives()} if self.detection else {}),
            "files": files,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json(path, self.to_dict())
        self.location = path
        return path


def split_of(key: str, fractions: dict[str, float]) -> str:
    """Map a key to a split by hash: stable for ever, independent of which other files exist."""
    u = int(hashlib.sha256(f"factory-split:{key}".encode()).hexdigest()[:15], 16) / float(16**15)
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[-1]


def scan_image(path: Path, data: bytes | None = None) -> tuple[str, int, int]:
    """Hash and decode one image; a file OpenCV cannot decode is a DataError naming it."""
    try:
        data = path.read_bytes() if data is None else data
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror}") from None
    from ..imagesize import ImageTooLarge, check_size

    try:
        check_size(data, what=str(path))  # before decoding: a small file can declare billions of pixels
    except ImageTooLarge as exc:
        raise DataError(exc.message, hint=exc.hint) from None
    except InputError:
        pass  # a format the header reader does not know (e.g. JPEG 2000): OpenCV decides below
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise DataError(
            f"corrupt or unsupported image: {path}",
            hint="re-export the file, or remove it from the dataset (supported: JPEG, PNG, BMP, TIFF, WebP)",
        )
    return sha256_bytes(data), int(img.shape[1]), int(img.shape[0])


def parse_fractions(text: str) -> dict[str, float]:
    """``"0.6,0.2,0.2"`` -> ``{"train": 0.6, "val": 0.2, "test": 0.2}``; DataError unless three fractions summing to 1."""
    try:
        parts = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise DataError(f"split {text!r} is not three numbers like 0.6,0.2,0.2") from None
    if len(parts) != 3:
        raise DataError(f"split {text!r}: give train,val,test fractions, e.g. 0.6,0.2,0.2")
    fractions = dict(zip(SPLITS, parts, strict=True))
    _check_fractions(fractions)
    return fractions


def _check_fractions(fractions: dict[str, float]) -> None:
    if set(fractions) - set(SPLITS) or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise DataError(f"split fractions {fractions} must be train/val/test values >= 0 that sum to 1")


def build_manifest(
    name: str,
    records: Iterable[Record],
    classes: list[str] | None = None,
    *,
    root: str = ".",
    fractions: dict[str, float] | None = None,
    source: dict | None = None,
) -> DatasetManifest:
    """Assign splits and check labels against the class list; every problem is reported at once."""
    records = list(records)
    fractions = dict(fractions or DEFAULT_SPLIT)
    _check_fractions(fractions)
    if not records:
        raise DataError(f"dataset {name!r} has no images", hint="check the source folder or annotation file")
    if classes is None:
        classes = sorted({label for r in records for label in r.labels})
    if len(set(classes)) != len(classes):
        raise DataError(f"class list has duplicates: {classes}")
    known = set(classes)
    problems = [
        f"{r.path}: label {label!r} is not in the class list {classes}" for r in records for label in r.labels
        if label not in known
    ]  # fmt: skip
    present = {label for r in records for label in r.labels}
    problems += [f"class {c!r} has no images" for c in classes if c not in present]
    if problems:
        shown = "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(
            f"dataset {name!r}: {len(problems)} label problem(s):\n  - {shown}",
            hint="fix the labels, add images for empty classes, or pass --classes with the full class list",
        )
    for r in records:
        r.split = split_of(r.group or r.sha256, fractions)
    return DatasetManifest(name=name, classes=list(classes), files=records, root=root, split=fractions, source=source or {})


def load_manifest(path: str | Path) -> DatasetManifest:
    """Load ``dataset.json`` (or a dataset folder holding one); malformed files are DataErrors."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        old = path.with_name("manifest.json")
        hint = (f"{old} looks like a dataset manifest of an older factory: rename it to {MANIFEST_NAME}"
                if old.is_file() and path.name == MANIFEST_NAME else "create one with `factory data synth` or `factory data import`")
        raise DataError(f"no dataset manifest at {path}", hint=hint)
    try:
        raw = read_json(path)
        if raw.get("schema") != SCHEMA:
            raise DataError(f"{path}: schema is {raw.get('schema')!r}, expected {SCHEMA!r}")
        files = [Record(**f) for f in raw["files"]]
        if any(not isinstance(r.objects, (list, type(None))) for r in files):
            raise DataError(f"{path}: 'objects' of a file must be a list")
        m = DatasetManifest(
            name=raw["name"], classes=list(raw["classes"]), files=files, root=raw.get("root", "."),
            split=raw.get("split", dict(DEFAULT_SPLIT)), source=raw.get("source", {}), location=path,
        )
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed dataset manifest ({type(exc).__name__}: {exc})") from None
    if raw.get("dataset_hash") not in (None, m.dataset_hash):
        raise DataError(f"{path}: dataset_hash does not match the files listed; the manifest was edited by hand")
    return m
