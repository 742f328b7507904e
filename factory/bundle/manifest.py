"""The bundle manifest: one type, read, validated, written and re-signed here and nowhere else.

``manifest.json`` is the contract between the factory and every device: the runtime and its
minimum version, the input spec and preprocessing, the labels, the sha256 of every file, the
recipe, what was measured (parity, latency, the host) and the lineage. :class:`Manifest` holds its
top-level sections as attributes (the sections themselves stay plain JSON objects); reading one
checks the schema version, every required field and its type, and the names that end up in paths
(model, version, target, file names), and reports every problem at once.

A manifest is always written together with its detached signature (:meth:`Manifest.write_signed`);
:func:`copy_resigned` is the one way to derive a bundle from another one (a new version, other
runtime options, the search's verdict) without touching its model files.
"""

from __future__ import annotations

import copy
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from .._io import atomic_dir, atomic_write, canonical_json, read_json, sha256_file
from ..errors import BundleError, InputError
from .signing import sign

__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "SCHEMA",
    "NAME",
    "SEMVER",
    "Manifest",
    "read_manifest",
    "file_entries",
    "copy_resigned",
    "parse_version",
    "version_key",
    "resolve_version",
    "bundle_dir",
    "check_name",
]

MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
SCHEMA = "factory.bundle/1"
# Names that become parts of paths and URLs (model, target, file names): no separators, no '..'.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# section -> required keys and their JSON types (bool is never accepted for a number)
_SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "runtime": {"backend": (str,), "package": (str,), "min_version": (str,), "options": (dict,)},
    "artifact": {"main": (str,), "precision": (str,), "size_bytes": (int,)},
    "input": {"shape": (list,)},
    "output": {},
    "preprocessing": {"resize": (list,), "mean": (list,), "std": (list,)},
    "recipe": {"precision": (str,), "pruning": (dict,)},
    "validation": {"passed": (bool,), "parity": (dict,), "checks": (list,), "budgets": (dict,)},
    "latency": {"p50_ms": (int, float), "p95_ms": (int, float)},
    "lineage": {},
    "reference_profile": {},
}


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a safe name (letters, digits, ``._-``, no leading dot); else InputError."""
    if not isinstance(value, str) or not NAME.match(value) or value in (".", ".."):
        raise InputError(
            f"{what} {value!r} is not a name of 1-100 characters [A-Za-z0-9._-] starting with a letter or digit"
        )
    return value


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


@dataclass
class Manifest:
    """A bundle's ``manifest.json``; see the module docstring."""

    name: str
    version: str
    target: str
    created_at: str
    runtime: dict
    artifact: dict
    files: dict
    input: dict
    output: dict
    preprocessing: dict
    labels: list
    recipe: dict
    validation: dict
    latency: dict
    lineage: dict
    reference_profile: dict
    schema: str = SCHEMA
    extra: dict = field(default_factory=dict)  # sections a newer factory added; kept and signed as they are

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        """Validate a parsed ``manifest.json``; every problem is listed in one BundleError."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: a manifest is a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise BundleError(
                f"{source}: schema {data.get('schema')!r}, expected {SCHEMA!r}",
                hint="the bundle was made by another tool or another major version of the factory",
            )
        problems = _problems(data)
        if problems:
            raise BundleError(
                f"{source}: malformed manifest ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        return cls(**kw, extra={k: copy.deepcopy(v) for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        """``folder/manifest.json``, validated (not verified: see :func:`factory.bundle.archive.verify_bundle`)."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise BundleError(f"{folder} has no {MANIFEST}; is it a bundle folder?")
        try:
            data = read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(path))

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The JSON object, in a stable key order."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return copy.deepcopy(out | self.extra)

    def write_signed(self, folder: str | Path, private_key) -> bytes:
        """Write ``manifest.json`` (canonical JSON) and its detached signature; return the manifest bytes."""
        data = self.to_dict()
        problems = _problems(data)
        if problems:
            raise BundleError("refusing to sign an invalid manifest:\n  - " + "\n  - ".join(problems))
        raw = canonical_json(data) + b"\n"
        atomic_write(Path(folder) / MANIFEST, raw)
        atomic_write(Path(folder) / SIGNATURE, sign(raw, private_key))
        return raw

    # ------------------------------------------------------------------ facts
    @property
    def key(self) -> str:
        """``name/version/target``: how the registry and devices name a release."""
        return f"{self.name}/{self.version}/{self.target}"

    @property
    def passed(self) -> bool:
        """Did the bundle meet its own budgets when it was built?"""
        return bool(self.validation["passed"])

    @property
    def main_file(self) -> str:
        """The main model file (what a runtime opens)."""
        return self.artifact["main"]


def _problems(data: dict) -> list[str]:
    problems: list[str] = []
    for k in ("name", "target"):
        if not isinstance(data.get(k), str) or not NAME.match(data[k]):
            problems.append(f"'{k}' must be a name of [A-Za-z0-9._-] (got {data.get(k)!r})")
    if not isinstance(data.get("version"), str) or not SEMVER.match(data["version"]):
        problems.append(f"'version' must be a semantic version like 1.4.2 (got {data.get('version')!r})")
    if not isinstance(data.get("created_at"), str):
        problems.append("'created_at' must be a string")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        problems.append("'labels' must be a non-empty list of strings")
    for section, keys in _SECTIONS.items():
        value = data.get(section)
        if not isinstance(value, dict):
            problems.append(f"'{section}' must be an object")
            continue
        for k, types in keys.items():
            if not _typed(value.get(k), types):
                problems.append(f"'{section}.{k}' must be {'|'.join(t.__name__ for t in types)}")
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        problems.append("'files' must list at least one file")
        return problems
    for name, entry in files.items():
        if not NAME.match(name) or PurePosixPath(name).name != name or name in (MANIFEST, SIGNATURE):
            problems.append(f"file name {name!r} must be a plain name of [A-Za-z0-9._-] (no folders)")
        elif (
            not isinstance(entry, dict)
            or not _SHA256.match(str(entry.get("sha256", "")))
            or not _typed(entry.get("size"), (int,))
            or entry["size"] < 0
        ):
            problems.append(f"'files.{name}' must be {{sha256: 64 hex digits, size: bytes}}")
    main = (data.get("artifact") or {}).get("main") if isinstance(data.get("artifact"), dict) else None
    if isinstance(main, str) and main not in files:
        problems.append(f"'artifact.main' {main!r} is not among the files")
    return problems


def read_manifest(folder: str | Path) -> Manifest:
    """Shorthand for :meth:`Manifest.read`."""
    return Manifest.read(folder)


def file_entries(folder: Path, names: list[str]) -> dict:
    """``{name: {sha256, size}}`` of files in ``folder``, for a manifest."""
    return {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in names}


def copy_resigned(src: str | Path, dest: str | Path, private_key, edit: Callable[[Manifest], None]) -> Manifest:
    """A copy of bundle ``src`` at ``dest`` with ``edit`` applied to its manifest, re-signed.

    The model files are copied unchanged (the manifest's sha256 entries still hold); only what
    ``edit`` changes differs: a new version, other runtime options, the search's verdict.
    """
    manifest = Manifest.read(src)
    edit(manifest)
    with atomic_dir(dest) as tmp:
        for f in Path(src).iterdir():
            if f.name not in (MANIFEST, SIGNATURE):
                shutil.copy2(f, tmp / f.name)
        manifest.write_signed(tmp, private_key)
    return manifest


def parse_version(v: str) -> tuple[int, int, int, str]:
    """(major, minor, patch, pre-release) of a semantic version; InputError otherwise."""
    m = SEMVER.match(v or "")
    if not m:
        raise InputError(f"version {v!r} is not a semantic version like 1.4.2")
    return int(m[1]), int(m[2]), int(m[3]), m[4] or ""


def version_key(v: str):
    """Sort key: releases in semantic-version order, a pre-release before its release."""
    major, minor, patch, pre = parse_version(v)
    return (major, minor, patch, pre == "", pre)


def bundle_dir(root: Path, name: str, version: str, target: str) -> Path:
    """Where a bundle lives: ``root/name/version/target``."""
    return Path(root) / name / version / target


def resolve_version(root: Path, name: str, weights_sha256: str, explicit: str | None = None) -> str:
    """An explicit version, else the version already given to these weights, else the next patch."""
    if explicit:
        parse_version(explicit)
        return explicit
    versions = []
    for mf in sorted((Path(root) / name).glob(f"*/*/{MANIFEST}")):
        try:
            m = Manifest.read(mf.parent)
        except BundleError:
            continue
        if m.lineage.get("canonical", {}).get("weights_sha256") == weights_sha256:
            return m.version
        versions.append(m.version)
    if not versions:
        return "0.1.0"
    major, minor, patch, _ = parse_version(max(versions, key=version_key))
    return f"{major}.{minor}.{patch + 1}"
