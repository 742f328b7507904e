"""Bundle folders, their archives, and verification.

A bundle folder holds the runtime files, ``manifest.json`` and ``manifest.sig``. Its archive is a
gzip tarball of exactly those files at the top level. Unpacking refuses absolute paths, ``..``,
links and device files, oversized members and too many members, and writes only into its own folder
(through a temp folder and a rename).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from .._io import atomic_dir, atomic_write, sha256_file
from ..errors import BundleError, SignatureError
from .manifest import MANIFEST, SIGNATURE, Manifest
from .signing import verify_signature

__all__ = ["pack", "unpack", "verify_bundle"]

MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_MEMBERS = 64
MAX_MANIFEST_BYTES = 4 << 20


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
    if not name.parts or m.name.strip("./") == "":
        raise BundleError(f"{where} has no file name; refusing to unpack")
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


_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def _members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's members, checked header by header: it stops at the first bad one, at the first
    member past the limit (a million headers cost nothing) and at a name seen before."""
    members, names, total = [], set(), 0
    while True:
        try:
            m = tar.next()
        except _READ_ERRORS as exc:
            raise BundleError(f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
        if m is None:
            return members
        if len(members) >= MAX_MEMBERS:
            raise BundleError(f"{archive} has more than {MAX_MEMBERS} members; a bundle has a few files")
        _check_member(m, archive)
        if PurePosixPath(m.name).name in names:
            raise BundleError(f"{archive}: member {m.name!r} appears twice; refusing an ambiguous archive")
        names.add(PurePosixPath(m.name).name)
        total += m.size
        if total > MAX_TOTAL_BYTES:
            raise BundleError(f"{archive} unpacks to more than {MAX_TOTAL_BYTES} bytes")
        members.append(m)


def _read(tar: tarfile.TarFile, m: tarfile.TarInfo, archive: Path, limit: int) -> bytes:
    try:
        src = tar.extractfile(m)
        data = src.read(limit + 1) if src is not None else None
    except _READ_ERRORS as exc:
        raise BundleError(f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if data is None or len(data) != m.size or len(data) > limit:
        raise BundleError(f"{archive}: member {m.name!r} cannot be read whole (limit {limit} bytes)")
    return data


def _check_signed(tar: tarfile.TarFile, members: list, archive: Path, keys: list) -> Manifest:
    """Before anything large is written: the manifest's signature by a trusted key, and the archive
    holding exactly the files it lists, with the sizes it lists."""
    by_name = {PurePosixPath(m.name).name: m for m in members}
    if MANIFEST not in by_name or SIGNATURE not in by_name:
        raise BundleError(f"{archive} has no {MANIFEST} and {SIGNATURE}: not a signed bundle")
    raw = _read(tar, by_name[MANIFEST], archive, MAX_MANIFEST_BYTES)
    sig = _read(tar, by_name[SIGNATURE], archive, 64 << 10)
    errors = []
    for key in keys:
        try:
            verify_signature(raw, sig, key)
            break
        except SignatureError as exc:
            errors.append(exc.message)
    else:
        raise SignatureError("the bundle is not signed by a trusted key: " + "; ".join(errors or ["no trusted keys"]))
    try:
        manifest = Manifest.from_dict(json.loads(raw), f"{archive}:{MANIFEST}")
    except ValueError as exc:
        raise BundleError(f"{archive}: {MANIFEST} is not valid JSON: {exc}") from None
    listed = {n: e["size"] for n, e in manifest.files.items()}
    present = {n: m.size for n, m in by_name.items() if n not in (MANIFEST, SIGNATURE)}
    if listed != present:
        raise BundleError(
            f"{archive}: its files {sorted(present)} (sizes) differ from the signed manifest's {sorted(listed)}"
        )
    return manifest


def unpack(archive: str | Path, dest: str | Path, trusted_keys: list | None = None) -> Path:
    """Safely unpack a bundle archive into ``dest`` (created atomically).

    With ``trusted_keys``, the manifest's signature and file list are checked before any model file
    is written (then :func:`verify_bundle` checks every file's sha256 after). Bounded throughout:
    member count, sizes, names, and read errors of a truncated archive are typed BundleErrors.
    """
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, mode="r:*")
    except _READ_ERRORS as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}") from None
    with tar:
        members = _members(tar, archive)
        if trusted_keys is not None:
            _check_signed(tar, members, archive, trusted_keys)
        with atomic_dir(dest) as tmp:
            for m in members:
                try:
                    src = tar.extractfile(m)
                    with open(tmp / PurePosixPath(m.name).name, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                except _READ_ERRORS as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, (EOFError, tarfile.TarError)) and exc.errno:
                        raise  # the disk (full, read-only): not the archive's fault
                    raise BundleError(f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
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
