"""A pipeline release on disk, and its verification (what a device checks before it runs one).

    <release>/
      pipeline.json   name, version, target, each stage's bundle (name, version, target, sha256 of its
                      signed manifest), the glue (rectify to the classifier's input size) and the
                      end-to-end validation on the test frames against the canonical pair
      pipeline.sig    Ed25519 signature of pipeline.json (the same key as the bundles')
      localise/       the localiser's bundle, as built
      classify/       the classifier's bundle, as built

A member is trusted only through the pipeline: its own signature must verify and its manifest's
sha256 must be the one the signed pipeline names, so a member swapped for another signed bundle, or
tampered with, refuses the whole release.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._io import sha256_file
from ..errors import BundleError

__all__ = ["STAGES", "PIPELINE", "PIPELINE_SIG", "verify_release"]

STAGES = ("localise", "classify")
PIPELINE, PIPELINE_SIG = "pipeline.json", "pipeline.sig"


def verify_release(folder: str | Path, public_key) -> dict:
    """The signed pipeline.json, after every member verified and matched; BundleError otherwise."""
    from .archive import verify_bundle
    from .signing import verify_signature

    folder = Path(folder)
    raw = (folder / PIPELINE).read_bytes() if (folder / PIPELINE).is_file() else b""
    if not raw or not (folder / PIPELINE_SIG).is_file():
        raise BundleError(f"{folder} is not a pipeline release (no {PIPELINE} and {PIPELINE_SIG})")
    verify_signature(raw, (folder / PIPELINE_SIG).read_bytes(), public_key)
    doc = json.loads(raw)
    problems = []
    named = {s["stage"]: s for s in doc.get("stages", [])}
    if set(named) != set(STAGES):
        problems.append(f"stages {sorted(named)}, expected {list(STAGES)}")
    for s in STAGES:
        member = folder / s
        if s not in named or not member.is_dir():
            problems.append(f"{s}: missing")
            continue
        try:
            verify_bundle(member, public_key)
        except BundleError as exc:
            problems.append(f"{s}: {exc}")
            continue
        if sha256_file(member / "manifest.json") != named[s]["manifest_sha256"]:
            problems.append(f"{s}: its manifest is not the one the signed pipeline names (swapped)")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in (PIPELINE, PIPELINE_SIG, *STAGES))
    problems += [f"{name}: not part of the release" for name in extra]
    if problems:
        raise BundleError(f"pipeline release {folder} failed verification:\n  - " + "\n  - ".join(problems))
    return doc
