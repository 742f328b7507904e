"""Bundle manifests: versions, file listing, signing, and opening a bundle to run it."""

from __future__ import annotations

import re
from pathlib import Path

from .._io import atomic_write, canonical_json, sha256_file
from ..errors import BundleError, InputError
from .archive import BUNDLE_SCHEMA, MANIFEST, SIGNATURE, read_manifest, verify_bundle
from .signing import sign

__all__ = ["SEMVER", "parse_version", "resolve_version", "file_entries", "write_signed", "open_bundle", "bundle_dir", "retag"]

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$")


def parse_version(v: str) -> tuple[int, int, int, str]:
    m = SEMVER.match(v or "")
    if not m:
        raise InputError(f"version {v!r} is not a semantic version like 1.4.2")
    return int(m[1]), int(m[2]), int(m[3]), m[4] or ""


def _version_key(v: str):
    major, minor, patch, pre = parse_version(v)
    return (major, minor, patch, pre == "", pre)  # a pre-release sorts before its release


def bundle_dir(root: Path, name: str, version: str, target: str) -> Path:
    return Path(root) / name / version / target


def resolve_version(root: Path, name: str, weights_sha256: str, explicit: str | None = None) -> str:
    """An explicit version, else the version already given to these weights, else the next patch."""
    if explicit:
        parse_version(explicit)
        return explicit
    versions = []
    for mf in sorted((Path(root) / name).glob(f"*/*/{MANIFEST}")):
        try:
            m = read_manifest(mf.parent)
        except BundleError:
            continue
        if not SEMVER.match(m.get("version", "")):
            continue
        if m.get("lineage", {}).get("canonical", {}).get("weights_sha256") == weights_sha256:
            return m["version"]
        versions.append(m["version"])
    if not versions:
        return "0.1.0"
    major, minor, patch, _ = parse_version(max(versions, key=_version_key))
    return f"{major}.{minor}.{patch + 1}"


def file_entries(folder: Path, names: list[str]) -> dict:
    return {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in names}


def write_signed(folder: Path, manifest: dict, private_key) -> bytes:
    """Write manifest.json (stable key order) and its detached signature; return the manifest bytes."""
    if manifest.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(f"refusing to sign a manifest without schema {BUNDLE_SCHEMA!r}")
    data = canonical_json(manifest) + b"\n"
    atomic_write(folder / MANIFEST, data)
    atomic_write(folder / SIGNATURE, sign(data, private_key))
    return data


def open_bundle(folder: str | Path, public_key=None):
    """(manifest, runner) for a bundle folder; verified first when a trusted key is given."""
    from ..export.base import get_backend

    folder = Path(folder)
    if public_key is not None:
        manifest = verify_bundle(folder, public_key)["manifest"]
    else:
        manifest = read_manifest(folder)
        for name, entry in manifest["files"].items():
            if not (folder / name).is_file() or sha256_file(folder / name) != entry["sha256"]:
                raise BundleError(f"{folder / name}: missing or does not match the manifest's sha256")
    runtime = manifest["runtime"]
    return manifest, get_backend(runtime["backend"]).load_runner(folder, runtime["options"])


def retag(src: Path, dest: Path, version: str, private_key, note: str) -> dict:
    """A copy of a bundle under another version, re-signed (same files; the manifest says why)."""
    import shutil

    from .._io import atomic_dir

    parse_version(version)
    manifest = read_manifest(Path(src))
    with atomic_dir(dest) as tmp:
        for f in Path(src).iterdir():
            if f.name not in (MANIFEST, SIGNATURE):
                shutil.copy2(f, tmp / f.name)
        manifest["lineage"]["retagged_from"] = {"version": manifest["version"], "note": note}
        manifest["version"] = version
        write_signed(tmp, manifest, private_key)
    return manifest
