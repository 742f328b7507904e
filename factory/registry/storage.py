"""Bundle archives in a blob store: a local folder by default, any fsspec URL (s3://...) at scale.

Blobs are content-addressed (``bundles/ab/<sha256>.tar.gz``), written under a temporary name and
moved into place only when complete, so a crash mid-upload never leaves a readable half blob.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["BlobStore"]


class BlobStore:
    def __init__(self, url: str):
        import fsspec

        options = {}
        if "://" not in url:
            Path(url).mkdir(parents=True, exist_ok=True)
            url = Path(url).resolve().as_posix()
        elif url.startswith(("s3://", "s3a://")):
            # replicas write the same bucket: never answer exists() from a cached listing. The endpoint
            # comes from botocore's own settings (AWS_ENDPOINT_URL for MinIO, moto, Ceph ...).
            options["use_listings_cache"] = False
        self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        self.root = self.root.rstrip("/")
        self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)

    @staticmethod
    def key_for(sha256: str) -> str:
        return f"bundles/{sha256[:2]}/{sha256}.tar.gz"

    @staticmethod
    def capture_key(sha256: str) -> str:
        """Where a field-captured image lives (content-addressed, like bundles)."""
        return f"captures/{sha256[:2]}/{sha256}.jpg"

    def put_bytes(self, data: bytes, key: str) -> None:
        """Store ``data`` under ``key`` (complete or not at all)."""
        if self.exists(key):
            return
        tmp = f"{self.root}/tmp/{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self._place(tmp, key)
        except BaseException:
            self._discard(tmp)  # a full disk or a failing store leaves no partial blob behind
            raise

    def read(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as f:
            return f.read()

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def put_file(self, local: Path, key: str) -> None:
        if self.exists(key):  # content-addressed: same key, same bytes
            return
        tmp = f"{self.root}/tmp/{uuid.uuid4().hex}"
        try:
            self.fs.put_file(str(local), tmp)
            self._place(tmp, key)
        except BaseException:
            self._discard(tmp)
            raise

    def _place(self, tmp: str, key: str) -> None:
        self.fs.makedirs(self._path(key).rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, self._path(key))

    def _discard(self, tmp: str) -> None:
        try:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        except OSError:
            pass  # clean_tmp removes it at the next start

    def delete(self, key: str) -> None:
        """Remove a blob (one no row refers to)."""
        if self.exists(key):
            self.fs.rm(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def iter_range(self, key: str, start: int = 0, end: int | None = None, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Bytes [start, end] inclusive (HTTP Range semantics)."""
        with self.fs.open(self._path(key), "rb") as f:
            f.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                data = f.read(chunk if remaining is None else min(chunk, remaining))
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self._path(key), "rb")

    def listing(self, prefix: str) -> list[tuple[str, float]]:
        """``(key, modified epoch seconds)`` of every blob under ``prefix`` (``captures``, ``bundles``)."""
        try:
            found = self.fs.find(self._path(prefix), detail=True)
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return [(name[cut:], _modified(e)) for name, e in found.items() if e.get("type") != "directory"]

    def clean_tmp(self, older_than: float = 3600.0) -> int:
        """Remove leftovers of uploads that never finished (after a crash), once they are ``older_than``
        seconds: a replica starting beside others must not delete the uploads they have in flight."""
        import time

        n, cutoff = 0, time.time() - older_than
        try:
            entries = self.fs.ls(f"{self.root}/tmp", detail=True)
        except FileNotFoundError:  # an object store has no empty folders: no leftovers
            return 0
        for e in entries:
            if e.get("type") == "directory" or _modified(e) > cutoff:
                continue
            self.fs.rm(e["name"])
            n += 1
        return n


def _modified(entry: dict) -> float:
    """An fsspec listing entry's modification time in epoch seconds (local: mtime; S3: LastModified)."""
    for key in ("mtime", "LastModified", "last_modified", "created"):
        v = entry.get(key)
        if v is None:
            continue
        return v.timestamp() if hasattr(v, "timestamp") else float(v)
    return 0.0  # unknown age: old enough
