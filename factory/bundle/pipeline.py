"""A pipeline release is a bundle whose files are its members' bundle archives.

    <release>/
      manifest.json      a bundle manifest like any other (name, version, target, files, input, labels,
                         validation, latency, reference profile), plus a ``pipeline`` section: each
                         stage's bundle (name, version, target, its archive, the sha256 of its signed
                         manifest), the glue (rectify to the classifier's input size)
      manifest.sig       its Ed25519 signature (the same build key as the members')
      localise.tar.gz    the localiser's bundle archive, byte for byte as ``factory bundle pack`` makes it
      classify.tar.gz    the classifier's

Because it is a bundle, everything that moves bundles moves it unchanged: ``factory publish``, the
registry's verification and immutability, rollouts and their health rules, the fleet manifest, the
agent's resumable download and verification. A member is trusted only through the pipeline: its
archive's sha256 is in the signed pipeline manifest, its own signature must verify, and its manifest
must be the one the pipeline names, so a member swapped for another signed bundle, or tampered with,
refuses the whole release.
"""

from __future__ import annotations

from pathlib import Path

from .._io import sha256_file
from ..errors import BundleError
from .manifest import Manifest

__all__ = ["STAGES", "is_pipeline", "member_archive", "unpack_members"]

STAGES = ("localise", "classify")


def is_pipeline(manifest: Manifest) -> bool:
    """Is this bundle a pipeline release (members, not one model)?"""
    return isinstance(manifest.extra.get("pipeline"), dict)


def member_archive(stage: str) -> str:
    """The file name of a stage's bundle archive inside the pipeline release."""
    return f"{stage}.tar.gz"


def unpack_members(folder: str | Path, manifest: Manifest, scratch: str | Path, public_key=None) -> dict[str, Path]:
    """Each stage's bundle unpacked into ``scratch/<stage>`` and checked against the signed pipeline.

    The caller has checked the pipeline bundle itself (its signature, every file's sha256). Here each
    member archive is unpacked (its own signature and file list first, when a key is given), every
    file verified, and its manifest's sha256 compared with the one the pipeline names.
    """
    from .archive import unpack, verify_bundle

    folder, scratch = Path(folder), Path(scratch)
    named = {s.get("stage"): s for s in manifest.extra["pipeline"].get("stages", []) if isinstance(s, dict)}
    problems = [f"stages {sorted(map(str, named))}, expected {list(STAGES)}"] if set(named) != set(STAGES) else []
    out: dict[str, Path] = {}
    for s in STAGES:
        if s not in named or member_archive(s) not in manifest.files:
            problems.append(f"{s}: missing")
            continue
        dest = scratch / s
        try:
            unpack(folder / member_archive(s), dest, trusted_keys=[public_key] if public_key is not None else None)
            if public_key is not None:
                verify_bundle(dest, public_key)
        except BundleError as exc:
            problems.append(f"{s}: {exc}")
            continue
        if sha256_file(dest / "manifest.json") != named[s].get("manifest_sha256"):
            problems.append(f"{s}: its manifest is not the one the signed pipeline names (swapped)")
            continue
        out[s] = dest
    if problems:
        raise BundleError(f"pipeline release {folder} failed verification:\n  - " + "\n  - ".join(problems))
    return out
