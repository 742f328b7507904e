"""A small HTTP client for the registry, used by device agents and by the CLI.

It speaks the registry's HTTP API and nothing else, so a device needs only ``httpx``. For one
machine without a server (``factory ... --local``), :func:`factory.registry.local.local_client`
hands it an in-process transport to the registry app.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import FactoryError, InputError

__all__ = ["RegistryError", "Unreachable", "RegistryClient", "default_url"]


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date or junk is ignored), capped at an hour."""
    try:
        return min(3600.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


class RegistryError(InputError):
    """The registry refused a request (4xx); the message is the server's reason."""

    def __init__(self, status: int, detail: str, hint: str | None = None, retry_after: float | None = None):
        super().__init__(f"registry said {status}: {detail}", hint=hint)
        self.status = status
        self.retry_after = retry_after  # seconds the registry asked for (Retry-After of a 503), else None


class Unreachable(FactoryError):
    """The registry could not be reached (network, DNS, refused, timeout)."""


def default_url() -> str:
    """``$FACTORY_REGISTRY_URL`` or the local default."""
    return os.environ.get("FACTORY_REGISTRY_URL", "http://127.0.0.1:8700")


class RegistryClient:
    """Registry API calls; ``http`` may be any httpx-compatible client (an in-process one for --local)."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0, http=None, on_close=None
    ):
        import httpx

        self.token = token or os.environ.get("FACTORY_REGISTRY_TOKEN")
        self._http = (
            http if http is not None else httpx.Client(base_url=(url or default_url()).rstrip("/"), timeout=timeout)
        )
        self._on_close = on_close

    def close(self) -> None:
        """Close the connection (and whatever the creator asked to run then)."""
        if self._on_close is not None:
            self._on_close()
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _headers(self, extra: dict | None = None) -> dict:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return h | (extra or {})

    def request(self, method: str, path: str, *, ok=(200, 201, 206, 304), **kw):
        import httpx

        try:
            r = self._http.request(method, path, headers=self._headers(kw.pop("headers", None)), **kw)
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"registry at {self._http.base_url} is unreachable: {exc}",
                hint="is `factory registry serve` running? set --registry or FACTORY_REGISTRY_URL",
            ) from None
        if r.status_code not in ok:
            try:
                body = r.json()
            except ValueError:
                body = None
            detail, hint = (body.get("detail"), body.get("hint")) if isinstance(body, dict) else (r.text[:300], None)
            raise RegistryError(
                r.status_code,
                detail if isinstance(detail, str) else str(detail),
                hint,
                _retry_after(r.headers.get("retry-after")),
            )
        return r

    def call(self, method: str, path: str, **kw):
        """A request whose answer must be JSON: anything else (an HTML error page with status 200, a
        truncated body) is a RegistryError, never an exception of the JSON parser."""
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            kind = r.headers.get("content-type", "no content type")
            raise RegistryError(r.status_code, f"the answer to {method} {path} is not JSON ({kind})") from None

    # ---- releases
    def publish(self, bundle: Path, allow_failed: bool = False) -> dict:
        """Publish a bundle archive, or a bundle folder (packed on the fly)."""
        import tempfile

        from ..bundle.archive import pack

        bundle = Path(bundle)
        with tempfile.TemporaryDirectory() as tmp:
            archive = pack(bundle, Path(tmp) / "bundle.tar.gz") if bundle.is_dir() else bundle
            return self.call(
                "POST",
                "/v1/releases",
                content=archive.read_bytes(),
                params={"allow_failed": str(allow_failed).lower()},
                headers={"Content-Type": "application/gzip"},
            )

    def releases(self, name: str | None = None) -> list[dict]:
        return self.call("GET", "/v1/releases", params={"name": name} if name else None)

    # ---- rollouts
    def create_rollout(self, plan: dict) -> dict:
        return self.call("POST", "/v1/rollouts", json=plan)

    def rollout(self, name: str) -> dict:
        return self.call("GET", f"/v1/rollouts/{name}")

    def rollouts(self) -> list[dict]:
        return self.call("GET", "/v1/rollouts")

    def act(self, name: str, action: str, reason: str = "") -> dict:
        return self.call("POST", f"/v1/rollouts/{name}/{action}", json={"reason": reason})

    def audit(self, rollout: str | None = None, limit: int = 200) -> list[dict]:
        params = {"limit": limit} | ({"rollout": rollout} if rollout else {})
        return self.call("GET", "/v1/audit", params=params)

    def fleet_manifest(self) -> dict:
        return self.call("GET", "/v1/fleet-manifest")

    # ---- devices
    def assignment(self, model: str, device_id: str, target: str, tags: list[str], etag: str | None = None):
        """(assignment or None when unchanged (304), ETag). The body must be a JSON object."""
        headers = {"If-None-Match": etag} if etag else None
        params = {"model": model, "device_id": device_id, "target": target, "tags": ",".join(tags)}
        r = self.request("GET", "/v1/assignment", params=params, headers=headers)
        if r.status_code == 304:
            return None, r.headers.get("ETag")
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RegistryError(r.status_code, f"the assignment is not a JSON object ({r.headers.get('content-type')})")
        return body, r.headers.get("ETag")

    def enroll(self, device_id: str, target: str, tags: list[str]) -> dict:
        """Enrol a device with an enrolment (or admin) token; the answer holds the device's own token."""
        return self.call("POST", "/v1/devices/enroll", json={"device_id": device_id, "target": target, "tags": tags})

    def download(self, url: str, dest: Path, sha256: str, size: int | None = None) -> Path:
        """Resumable download: bytes already in ``dest.part`` are kept and the rest is fetched with a
        Range request; the sha256 of the whole file is checked before it is renamed to ``dest``."""
        from urllib.parse import urlsplit

        import httpx

        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        if size is None or have < size:
            headers = self._headers({"Range": f"bytes={have}-"} if have else None)
            try:
                with self._http.stream("GET", urlsplit(url).path, headers=headers) as r:
                    if r.status_code not in (200, 206):
                        r.read()
                        raise RegistryError(r.status_code, r.text[:300])
                    with open(part, "ab" if r.status_code == 206 else "wb") as f:
                        for chunk in r.iter_bytes(1 << 16):
                            f.write(chunk)
            except httpx.HTTPError as exc:
                raise Unreachable(
                    f"download of {url} was interrupted: {exc}", hint="the next attempt resumes where it stopped"
                ) from None
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise InputError(
                f"downloaded bundle has sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...; discarded"
            )
        part.replace(dest)
        return dest

    def post_telemetry(self, summary: dict) -> dict:
        return self.call("POST", "/v1/telemetry", json=summary, ok=(200, 201))
