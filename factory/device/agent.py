"""The device agent: pull the assigned bundle, verify it, swap it in atomically, run it, report.

State folder layout (every path below is derived from a content hash or a fixed name, and resolved
inside the state folder before it is used; nothing the registry says becomes a path)::

    releases/<sha256[:32]>/   verified, unpacked bundles (the active one and the previous one)
    downloads/<sha256>.tar.gz archives, ``.part`` while downloading (resumable)
    active.json               {"release", "sha256", "previous": {...}} (atomic rewrite)
    failed.json               bundles that failed to load, by sha256, with their back-off
    fleet.json                the newest signed fleet-manifest sequence accepted (anti-rollback)
    outbox/*.json             telemetry summaries waiting for upload (survive offline spells)

Order of checks for a new release: the assignment's fields (names, semantic version, sha256, size,
the device's own target) -> download (resumable) -> sha256 of the archive -> the manifest's
signature by the configured key and the archive's file list, before anything is unpacked -> every
file's sha256 -> the runtime loads it and runs it once -> only then the swap.

The agent never stops serving: whatever goes wrong while syncing (an unreachable or lying registry,
a full disk, a bundle whose model does not load), the current model keeps running, the error is
logged and counted in the next telemetry window, and a bundle that failed is not retried before
its back-off (doubling, up to an hour) has passed.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np

from .._io import read_json, sha256_file, write_json
from ..bundle.manifest import NAME, SEMVER, Manifest
from ..errors import FactoryError, InputError
from ..preprocess import preprocess
from ..stats import image_stats
from .chain import Chain
from .telemetry import Window

__all__ = ["Agent", "check_release", "MAX_BUNDLE_BYTES"]

MAX_BUNDLE_BYTES = 4 << 30
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger("factory.device")


def check_release(release: object, model: str, target: str) -> dict:
    """The release an assignment names, checked field by field; InputError on anything unexpected."""
    if not isinstance(release, dict):
        raise InputError("the assignment's release is not an object")
    problems = [k for k in ("name", "target") if not isinstance(release.get(k), str) or not NAME.match(release[k])]
    if not isinstance(release.get("version"), str) or not SEMVER.match(release["version"]):
        problems.append("version")
    if not isinstance(release.get("sha256"), str) or not _SHA256.match(release["sha256"]):
        problems.append("sha256")
    size = release.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES):
        problems.append("size")
    if not isinstance(release.get("url"), str) or len(release["url"]) > 2000:
        problems.append("url")
    if problems:
        raise InputError(f"the assignment's release has invalid field(s) {problems}; refusing it")
    if release["name"] != model or release["target"] != target:
        raise InputError(
            f"the assignment names {release['name']}/{release['target']}, not this device's {model}/{target}"
        )
    return release


class Agent:
    """One device: its identity, its state folder, the model it serves and its telemetry."""

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
        fleet_key=None,
    ):
        self.client, self.model, self.device_id, self.target, self.tags = client, model, device_id, target, list(tags)
        self.state_dir = Path(state_dir).resolve()
        self.bundle_key, self.window_seconds, self.keep, self.fleet_key = (
            bundle_key,
            window_seconds,
            keep_releases,
            fleet_key,
        )
        for sub in ("releases", "downloads", "outbox"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.manifest: Manifest | None = None
        self.runner = None
        self.sha256: str | None = None
        self.etag: str | None = None
        self.last_error: str | None = None
        self.sync_errors = 0  # failed syncs since the last telemetry window closed
        self.window: Window | None = None
        self.upload_failures = 0
        self.next_upload = 0.0
        self.registered = False
        self.rollout: str | None = None  # the rollout the current assignment came through
        self.capture_policy: dict | None = None  # its plan's capture block (opt-in; None: never capture)
        from .capture import Capturer

        self.capturer = Capturer(self.state_dir / "outbox" / "captures", device_id)
        self._load_active()

    # ------------------------------------------------------------------ paths, all inside the state folder
    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.state_dir):
            raise InputError(f"{path} is outside the agent's state folder; refusing it")
        return resolved

    def _folder(self, sha256: str) -> Path:
        return self._inside(self.state_dir / "releases" / sha256[:32])

    def _archive(self, sha256: str) -> Path:
        return self._inside(self.state_dir / "downloads" / f"{sha256}.tar.gz")

    # ------------------------------------------------------------------ model management
    def _open(self, sha256: str):
        """Verify and load the bundle of ``sha256``; re-unpack it from its verified archive if its folder
        was damaged (a corrupted active bundle heals instead of being given up)."""
        from ..bundle.archive import unpack
        from .loader import open_bundle

        folder = self._folder(sha256)
        try:
            return open_bundle(folder, self.bundle_key)
        except FactoryError as exc:
            archive = self._archive(sha256)
            if not archive.is_file() or sha256_file(archive) != sha256:
                raise
            log.warning("bundle %s failed verification (%s); unpacking it again from its archive", sha256[:12], exc)
            shutil.rmtree(folder, ignore_errors=True)
            unpack(archive, folder, trusted_keys=[self.bundle_key])
            return open_bundle(folder, self.bundle_key)

    def _load_active(self) -> None:
        """Resume from the state folder: the active bundle is re-verified (and healed) before it serves."""
        path = self.state_dir / "active.json"
        if not path.is_file():
            return
        try:
            active = read_json(path)
        except (ValueError, OSError) as exc:
            self.last_error = f"active.json unreadable: {exc}"
            return
        for entry in (active, active.get("previous") or {}):
            sha = entry.get("sha256")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                continue
            try:
                self.manifest, self.runner = self._open(sha)
                self.sha256 = sha
                return
            except (FactoryError, OSError) as exc:
                self.last_error = f"bundle {sha[:12]} failed verification on start: {exc}"

    @property
    def release_key(self) -> str | None:
        """``name/version/target`` of the release being served."""
        return self.manifest.key if self.manifest else None

    def _activate(self, release: dict) -> None:
        from ..bundle.archive import unpack

        sha = release["sha256"]
        archive = self._archive(sha)
        if not archive.is_file():
            self.client.download(release["url"], archive, sha, release.get("size"))
        folder = self._folder(sha)
        if not folder.is_dir():
            unpack(archive, folder, trusted_keys=[self.bundle_key])  # signature and file list before unpacking
        manifest, runner = self._open(sha)  # signature + every file hash, then a load
        if manifest.key != f"{release['name']}/{release['version']}/{release['target']}":
            raise InputError(f"bundle {sha[:12]} is {manifest.key}, not the release it was assigned as")
        if isinstance(runner, Chain):  # a pipeline release: both stages on a blank frame
            runner.smoke()
        else:
            runner(np.zeros((1, *manifest.input["shape"][1:]), np.float32))  # it must actually run
        previous = {"release": self.release_key, "sha256": self.sha256} if self.manifest else None
        write_json(self.state_dir / "active.json", {"release": manifest.key, "sha256": sha, "previous": previous})
        self.manifest, self.runner, self.sha256 = manifest, runner, sha
        self._prune(keep={sha} | ({previous["sha256"]} if previous else set()))

    def _prune(self, keep: set[str]) -> None:
        names = {s[:32] for s in keep}
        for d in (self.state_dir / "releases").iterdir():
            if d.name not in names:
                shutil.rmtree(d, ignore_errors=True)
        for f in (self.state_dir / "downloads").glob("*.tar.gz"):
            if f.name.split(".")[0] not in keep:
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------ bundles that failed
    def _failed(self) -> dict:
        path = self.state_dir / "failed.json"
        try:
            data = read_json(path) if path.is_file() else {}
        except (ValueError, OSError):
            data = {}
        return data if isinstance(data, dict) else {}

    def _remember_failure(self, sha: str, error: str, now: float) -> dict:
        failed = self._failed()
        entry = failed.get(sha) if isinstance(failed.get(sha), dict) else {}
        n = int(entry.get("failures", 0)) + 1
        failed[sha] = {"failures": n, "retry_at": now + min(3600.0, 30.0 * 2 ** (n - 1)), "error": error[:300]}
        write_json(self.state_dir / "failed.json", dict(list(failed.items())[-50:]))
        return failed[sha]

    # ------------------------------------------------------------------ sync
    @staticmethod
    def _fleet_floor(seen: Path) -> int | None:
        """The highest manifest sequence this device accepted (persisted: it survives restarts), or None.
        A damaged file fails closed: accepting any sequence then would re-open replays of old manifests."""
        if not seen.is_file():
            return None
        try:
            floor = read_json(seen).get("sequence")
        except (ValueError, AttributeError, OSError):
            floor = None
        if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
            from ..errors import SignatureError

            raise SignatureError(
                f"{seen} (the newest fleet-manifest sequence accepted) is damaged; refusing every manifest",
                hint="an operator who trusts the current manifest deletes the file (the next one sets it again)",
            )
        return floor

    def _assignment(self):
        """The release to run (None: nothing assigned; False: unchanged since the last poll)."""
        if self.fleet_key is not None:
            from .assign import assign
            from .fleetstate import verify_state

            seen = self.state_dir / "fleet.json"
            floor = self._fleet_floor(seen)
            state = verify_state(self.client.fleet_manifest(), self.fleet_key, min_sequence=floor)
            write_json(seen, {"sequence": state["sequence"]})
            a = assign(state, self.model, self.device_id, self.target, self.tags)
            self.rollout, self.capture_policy = a.rollout, a.capture
            return a.release
        assignment, etag = self.client.assignment(self.model, self.device_id, self.target, self.tags, self.etag)
        if assignment is None:
            return False
        self.etag = etag
        policy = assignment.get("capture")
        self.rollout = assignment.get("rollout") if isinstance(assignment.get("rollout"), str) else None
        self.capture_policy = policy if isinstance(policy, dict) else None
        return assignment.get("release")

    def sync(self, now: float | None = None) -> str:
        """Poll the assignment; switch models when told to. Returns what happened and never raises."""
        now = time.time() if now is None else now
        try:
            if not self.registered and self.fleet_key is None:
                body = {"device_id": self.device_id, "target": self.target, "tags": self.tags}
                self.client.request("POST", "/v1/devices", json=body, ok=(200, 201))
                self.registered = True
            release = self._assignment()
            if release is False:
                return "unchanged (304)"
            if release is None:
                return "no release assigned"
            release = check_release(release, self.model, self.target)
            if release["sha256"] == self.sha256:
                return f"keeping {self.release_key}"
            backoff = self._failed().get(release["sha256"])
            if isinstance(backoff, dict) and now < float(backoff.get("retry_at", 0)):
                self.etag = None
                return (
                    f"kept {self.release_key}: {release['version']} failed {backoff.get('failures')} time(s); "
                    f"next try in {float(backoff['retry_at']) - now:.0f} s"
                )
            old = self.release_key
            try:
                self._activate(release)
            except Exception as exc:
                self._remember_failure(release["sha256"], f"{type(exc).__name__}: {exc}", now)
                raise
            self.last_error = None
            return f"switched {old} -> {self.release_key}"
        except Exception as exc:  # noqa: BLE001 - the old model keeps serving whatever went wrong
            self.etag = None  # ask again next time
            self.sync_errors += 1
            self.last_error = (str(exc) or type(exc).__name__).splitlines()[0][:300]
            log.warning("sync failed, keeping %s: %s", self.release_key, self.last_error)
            return f"kept {self.release_key}: {self.last_error}"

    # ------------------------------------------------------------------ inference and telemetry
    @property
    def task(self):
        """What the active bundle's model is for, with its output's geometry (its manifest says)."""
        from ..tasks import get_task

        m = self.manifest
        key = (m.name, m.version, m.target)
        if getattr(self, "_task_key", None) != key:
            # a pipeline release counts its classifier's classes (its output is the classifier's)
            task = None if isinstance(self.runner, Chain) else m.validation.get("task")
            self._task, self._task_key = get_task(task, None if task is None else m.output), key
        return self._task

    def infer(self, frame: np.ndarray, now: float | None = None):
        """Run the active model on one BGR frame and its task's post-processing; None when nothing serves.

        Classification: (label, confidence); detection: ``[{"label", "score", "box"}]`` in the frame's
        pixels; document localisation: ``{"corners", "crop"}`` (the document warped flat). The latency
        telemetry counts is the model's and the post-processing's together: what the application waits."""
        now = time.time() if now is None else now
        if self.runner is None:
            return None
        self._roll_window(now)
        stats = image_stats(frame)
        t0 = time.perf_counter()
        chain = isinstance(self.runner, Chain)  # a pipeline release: localise, rectify, classify
        try:
            if chain:
                result, outcome = self.runner.infer(frame)
            else:
                raw = self.runner(preprocess(frame, self.manifest.preprocessing))
                result, outcome = self.task.device_output(raw, frame, self.manifest.labels)
        except Exception:  # an inference error is data for telemetry, not a crash
            self.window.add(0.0, None, stats)
            return None
        self.window.add((time.perf_counter() - t0) * 1000, outcome, stats)
        if not chain:  # field captures are for single-model releases (a pipeline's are not built)
            self._maybe_capture(frame, raw, outcome, stats, now)
        return result

    def _maybe_capture(self, frame, raw, outcome: dict, stats, now: float) -> None:
        """Keep the frame for the field dataset when the rollout's plan asks (see :mod:`.capture`)."""
        if not self.capture_policy:
            return
        m = self.manifest
        try:
            self.capturer.consider(
                frame, outcome, self.task.records(raw, m.labels)[0], stats, policy=self.capture_policy,
                release={"name": m.name, "version": m.version, "target": m.target}, rollout=self.rollout,
                reference=m.reference_profile, window_start=self.window.start if self.window else None, now=now,
            )  # fmt: skip
        except (OSError, ValueError) as exc:  # a full disk must not stop inference
            log.warning("capture not kept: %s", exc)

    def _new_window(self, now: float) -> Window:
        m = self.manifest
        rel = {"name": m.name, "version": m.version, "target": m.target}
        start = now - now % self.window_seconds
        classes = len(self.task.telemetry_classes(m.labels))
        return Window(self.device_id, self.target, self.tags, rel, classes, start=start, seconds=self.window_seconds)

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
        s = self.window.summary() | {"sync_errors": self.sync_errors}
        self.sync_errors = 0
        write_json(
            self.state_dir / "outbox" / f"{int(self.window.start)}-{s['idempotency_key'].rsplit(':', 1)[1]}.json", s
        )
        self.window = None

    def _back_off(self, now: float, retry_after: float | None, why: str) -> None:
        """Wait before the next upload: exponential with jitter, and at least what the registry asked for."""
        self.upload_failures += 1
        delay = min(300.0, 2.0**self.upload_failures) * (0.5 + random.random())
        self.next_upload = now + max(delay, retry_after or 0.0)
        self.last_error = why

    def upload(self, now: float | None = None) -> dict:
        """Send the outbox oldest first; stop at the first network error and back off (with jitter)."""
        from .client import RegistryError, Unreachable

        now = time.time() if now is None else now
        if now < self.next_upload:
            return {"sent": 0, "waiting": len(list((self.state_dir / "outbox").glob("*.json"))), "backoff": True}
        sent = dropped = 0
        for f in sorted((self.state_dir / "outbox").glob("*.json")):
            try:
                summary = json.loads(f.read_text())
            except (ValueError, OSError) as exc:  # a damaged outbox file is dropped, not retried forever
                dropped += 1
                self.last_error = f"telemetry {f.name} unreadable: {exc}"
                f.unlink(missing_ok=True)
                continue
            try:
                self.client.post_telemetry(summary)
                sent += 1
            except RegistryError as exc:
                if exc.status == 409 and "already stored" in exc.message:
                    sent += 1  # a retry of an upload whose answer was lost: it is stored, once
                elif exc.status >= 500:  # the registry cannot store it now (503: as long as it says)
                    self._back_off(now, exc.retry_after, exc.message)
                    break
                else:
                    dropped += 1  # the registry rejected it for good (4xx with a reason); keep the reason
                    self.last_error = f"telemetry {f.name} rejected: {exc.message}"
            except (Unreachable, OSError) as exc:
                self._back_off(now, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                break
            f.unlink(missing_ok=True)
        else:
            self.upload_failures = 0
        out = {"sent": sent, "dropped": dropped, "waiting": len(list((self.state_dir / "outbox").glob("*.json")))}
        if self.capturer.pending() and self.upload_failures == 0:
            out["captures"] = self.capturer.upload(self.client)
        return out

    def run(self, frames, *, poll_seconds: float = 30.0, max_frames: int | None = None, on_result=None) -> dict:
        """Serve frames from an iterator; poll and upload in between. Returns counters."""
        counts = {"frames": 0, "polls": 0, "switches": 0}
        next_poll = 0.0
        for frame in frames:
            now = time.time()
            if now >= next_poll:
                status = self.sync(now)
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
