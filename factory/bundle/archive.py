"""Bundle folders, their archives, and verification.

A bundle folder holds the runtime files, ``manifest.json`` and ``manifest.sig``. Its archive is a
gzip tarball of exactly those files at the top level. Unpacking refuses absolute paths, ``..``,
links and device files, oversized members and too many members, and writes only into its own folder
(through a temp folder and a rename).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path, PurePosixPath

from .._io import atomic_dir, atomic_write, sha256_file
from ..errors import BundleError
from .manifest import MANIFEST, SIGNATURE, Manifest
from .signing import verify_signature

__all__ = ["pack", "unpack", "verify_bundle"]

MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_MEMBERS = 64


def pack(folder: Path, archive: Path) -> Path:
    """Write ``archive`` (.tar.gz) with the bundle's files, sorted, with fixed metadata.

    The bytes depend only on the files' names and contents (no timestamps, owners or gzip
    header time), so packing the same bundle twice gives the same sha256: a registry can tell a
    harmless re-publish from a conflicting one.
    """
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            info = tar.gettarinfo(str(f), arcname=f.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            info.mtime = 0
            with open(f, "rb") as fh:
                tar.addfile(info, fh)
    return atomic_write(archive, buf.getvalue())


def _check_member(m: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(m.name)
    where = f"{archive}: member {m.name!r}"
    if name.is_absolute() or m.name.startswith(("/", "\\")) or ":" in name.parts[0]:
        raise BundleError(f"{where} has an absolute path; refusing to unpack")
    if ".." in name.parts:
        raise BundleError(f"{where} climbs out of the bundle folder ('..'); refusing to unpack")
    if m.issym() or m.islnk():
        raise BundleError(f"{where} is a link; bundles never contain links")
    if not m.isfile():
        raise BundleError(f"{where} is not a regular file")
    if len(name.parts) != 1:
        raise BundleError(f"{where} is in a sub-folder; bundle files sit at the top level")
    if m.size > MAX_MEMBER_BYTES:
        raise BundleError(f"{where} is {m.size} bytes, over the {MAX_MEMBER_BYTES} byte limit")


def unpack(archive: str | Path, dest: str | Path) -> Path:
    """Safely unpack a bundle archive into ``dest`` (created atomically)."""
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}") from None
    with tar, atomic_dir(dest) as tmp:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise BundleError(f"{archive} has {len(members)} members; a bundle has at most {MAX_MEMBERS}")
        total = 0
        for m in members:
            _check_member(m, archive)
            total += m.size
            if total > MAX_TOTAL_BYTES:
                raise BundleError(f"{archive} unpacks to more than {MAX_TOTAL_BYTES} bytes")
        for m in members:
            src = tar.extractfile(m)
            if src is None:
                raise BundleError(f"{archive}: cannot read member {m.name!r}")
            with open(tmp / m.name, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return Path(dest)


def verify_bundle(folder: str | Path, public_key) -> dict:
    """Check the signature with the given key, then every file's sha256 and size; nothing extra allowed.

    Returns ``{"key_id", "files", "manifest": Manifest}``.
    """
    folder = Path(folder)
    sig_path = folder / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(f"{folder} has no {SIGNATURE}: the bundle is unsigned")
    raw = (folder / MANIFEST).read_bytes() if (folder / MANIFEST).is_file() else b""
    if not raw:
        raise BundleError(f"{folder} has no {MANIFEST}")
    signer = verify_signature(raw, sig_path.read_bytes(), public_key)
    manifest = Manifest.read(folder)
    files = manifest.files
    problems = []
    for name, entry in files.items():
        f = folder / name
        if PurePosixPath(name).name != name:
            problems.append(f"{name}: file names in a bundle have no folders")
        elif not f.is_file():
            problems.append(f"{name}: missing")
        elif f.stat().st_size != entry.get("size") or sha256_file(f) != entry.get("sha256"):
            problems.append(f"{name}: sha256/size differ from the signed manifest (tampered or corrupt)")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in files and p.name not in (MANIFEST, SIGNATURE))
    problems += [f"{name}: not listed in the manifest" for name in extra]
    if problems:
        raise BundleError(f"bundle {folder} failed verification:\n  - " + "\n  - ".join(problems))
    return {"key_id": signer, "files": len(files), "manifest": manifest}
