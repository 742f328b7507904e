"""The device agent: pull the assigned bundle, verify it, swap it in atomically, run it, report.

State folder layout::

    releases/<name>-<version>-<target>/   verified, unpacked bundles (the active one and the previous one)
    downloads/                            archives, ``.part`` while downloading (resumable)
    active.json                           {"release", "folder", "previous": {...}} (atomic rewrite)
    outbox/*.json                         telemetry summaries waiting for upload (survive offline spells)

The agent never stops serving: if the registry is unreachable, or a new bundle fails to download,
verify or load, the current model keeps running and the error is remembered for the next poll.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from .._io import read_json, write_json
from ..bundle.manifest import Manifest
from ..errors import FactoryError
from ..preprocess import preprocess
from ..stats import image_stats
from .telemetry import Window

__all__ = ["Agent"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


class Agent:
    def __init__(
        self,
        client,
        *,
        model: str,
        device_id: str,
        target: str,
        tags: list[str],
        state_dir: Path,
        bundle_key,
        window_seconds: int = 60,
        keep_releases: int = 2,
    ):
        self.client, self.model, self.device_id, self.target, self.tags = client, model, device_id, target, list(tags)
        self.state_dir, self.bundle_key, self.window_seconds, self.keep = (
            Path(state_dir),
            bundle_key,
            window_seconds,
            keep_releases,
        )
        for sub in ("releases", "downloads", "outbox"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.manifest: Manifest | None = None
        self.runner = None
        self.etag: str | None = None
        self.last_error: str | None = None
        self.window: Window | None = None
        self.upload_failures = 0
        self.next_upload = 0.0
        self.registered = False
        self._load_active()

    # ------------------------------------------------------------------ model management
    def _load_active(self) -> None:
        """Resume from the state folder: the active bundle is re-verified before it serves."""
        from .loader import open_bundle

        path = self.state_dir / "active.json"
        if not path.is_file():
            return
        active = read_json(path)
        try:
            self.manifest, self.runner = open_bundle(Path(active["folder"]), self.bundle_key)
        except FactoryError as exc:
            self.last_error = f"active bundle failed verification on start: {exc}"
            prev = active.get("previous")
            if prev:
                self.manifest, self.runner = open_bundle(Path(prev["folder"]), self.bundle_key)

    @property
    def release_key(self) -> str | None:
        if not self.manifest:
            return None
        return self.manifest.key

    def _activate(self, release: dict) -> None:
        from ..bundle.archive import unpack
        from .loader import open_bundle

        key = f"{release['name']}-{release['version']}-{release['target']}"
        archive = self.state_dir / "downloads" / f"{key}.tar.gz"
        if not archive.is_file():
            self.client.download(release["url"], archive, release["sha256"], release.get("size"))
        folder = self.state_dir / "releases" / key
        if not folder.is_dir():
            unpack(archive, folder)  # safe unpack: no absolute paths, '..', links
        manifest, runner = open_bundle(folder, self.bundle_key)  # signature + every file hash, then a load
        runner(np.zeros((1, *manifest.input["shape"][1:]), np.float32))  # it must actually run
        previous = (
            {"release": self.release_key, "folder": str(self._folder_of(self.release_key))} if self.manifest else None
        )
        write_json(
            self.state_dir / "active.json",
            {
                "release": f"{release['name']}/{release['version']}/{release['target']}",
                "folder": str(folder),
                "previous": previous,
            },
        )
        self.manifest, self.runner = manifest, runner
        self._prune(keep={folder.name} | ({Path(previous["folder"]).name} if previous else set()))

    def _folder_of(self, key: str | None) -> Path:
        return self.state_dir / "releases" / (key or "").replace("/", "-")

    def _prune(self, keep: set[str]) -> None:
        for d in (self.state_dir / "releases").iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
                (self.state_dir / "downloads" / f"{d.name}.tar.gz").unlink(missing_ok=True)

    def sync(self) -> str:
        """Poll the assignment; switch models when told to. Returns what happened, never raises."""
        try:
            if not self.registered:
                self.client.request(
                    "POST",
                    "/v1/devices",
                    json={"device_id": self.device_id, "target": self.target, "tags": self.tags},
                    ok=(200, 201),
                )
                self.registered = True
            assignment, etag = self.client.assignment(self.model, self.device_id, self.target, self.tags, self.etag)
            if assignment is None:
                return "unchanged (304)"
            self.etag = etag
            release = assignment.get("release")
            if release is None:
                return "no release assigned"
            key = f"{release['name']}/{release['version']}/{release['target']}"
            if key == self.release_key:
                return f"keeping {key}"
            old = self.release_key
            self._activate(release)
            self.last_error = None
            return f"switched {old} -> {key} ({assignment.get('reason')})"
        except FactoryError as exc:
            self.etag = None  # ask again next time
            self.last_error = str(exc).splitlines()[0]
            return f"kept {self.release_key}: {self.last_error}"

    # ------------------------------------------------------------------ inference and telemetry
    def infer(self, frame: np.ndarray, now: float | None = None) -> tuple[str, float] | None:
        now = time.time() if now is None else now
        if self.runner is None:
            return None
        self._roll_window(now)
        stats = image_stats(frame)
        t0 = time.perf_counter()
        try:
            logits = self.runner(preprocess(frame, self.manifest.preprocessing))[0]
        except Exception:  # an inference error is data for telemetry, not a crash
            self.window.add(0.0, None, stats)
            return None
        ms = (time.perf_counter() - t0) * 1000
        probs = _softmax(logits.astype(np.float64))
        self.window.add(ms, probs, stats)
        i = int(probs.argmax())
        return self.manifest.labels[i], float(probs[i])

    def _new_window(self, now: float) -> Window:
        rel = {"name": self.manifest.name, "version": self.manifest.version, "target": self.manifest.target}
        start = now - now % self.window_seconds
        return Window(
            self.device_id,
            self.target,
            self.tags,
            rel,
            len(self.manifest.labels),
            start=start,
            seconds=self.window_seconds,
        )

    def _roll_window(self, now: float) -> None:
        if self.window is not None and (
            now >= self.window.start + self.window_seconds or self.window.release["version"] != self.manifest.version
        ):
            self.close_window()
        if self.window is None:
            self.window = self._new_window(now)

    def close_window(self) -> None:
        """Move the current window's summary to the on-disk outbox (uploaded later, with retries)."""
        if self.window is None or self.window.count == 0:
            self.window = None
            return
        s = self.window.summary()
        write_json(
            self.state_dir / "outbox" / f"{int(self.window.start)}-{s['idempotency_key'].rsplit(':', 1)[1]}.json", s
        )
        self.window = None

    def upload(self, now: float | None = None) -> dict:
        """Send the outbox oldest first; stop at the first network error and back off (with jitter)."""
        from .client import RegistryError, Unreachable

        now = time.time() if now is None else now
        if now < self.next_upload:
            return {"sent": 0, "waiting": len(list((self.state_dir / "outbox").glob("*.json"))), "backoff": True}
        sent = dropped = 0
        for f in sorted((self.state_dir / "outbox").glob("*.json")):
            try:
                self.client.post_telemetry(json.loads(f.read_text()))
                sent += 1
            except RegistryError as exc:
                if exc.status == 409 and "already stored" in exc.message:
                    sent += 1  # a retry of an upload whose answer was lost: it is stored, once
                elif exc.status >= 500:
                    break
                else:
                    dropped += 1  # the registry rejected it for good (4xx with a reason); keep the reason
                    self.last_error = f"telemetry {f.name} rejected: {exc.message}"
            except Unreachable as exc:
                self.upload_failures += 1
                delay = min(300.0, 2.0**self.upload_failures) * (0.5 + random.random())
                self.next_upload = now + delay
                self.last_error = str(exc).splitlines()[0]
                break
            f.unlink(missing_ok=True)
        else:
            self.upload_failures = 0
        return {"sent": sent, "dropped": dropped, "waiting": len(list((self.state_dir / "outbox").glob("*.json")))}

    def run(self, frames, *, poll_seconds: float = 30.0, max_frames: int | None = None, on_result=None) -> dict:
        """Serve frames from an iterator; poll and upload in between. Returns counters."""
        counts = {"frames": 0, "polls": 0, "switches": 0}
        next_poll = 0.0
        for frame in frames:
            now = time.time()
            if now >= next_poll:
                status = self.sync()
                counts["polls"] += 1
                counts["switches"] += status.startswith("switched")
                self.upload(now)
                next_poll = now + poll_seconds
            result = self.infer(frame, now)
            if on_result:
                on_result(result)
            counts["frames"] += 1
            if max_frames is not None and counts["frames"] >= max_frames:
                break
        self.close_window()
        self.upload()
        return counts
