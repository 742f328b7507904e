"""`factory fleet simulate`: many simulated devices in one process, against a real registry.

Each simulated device has its own id, target, tags and agent state (the release it runs, the
telemetry it has not uploaded yet). Devices learn their assignment from the service or from the
signed static manifest (the same rule), "download" a release once per process (the bundle really is
downloaded, verified and run), and report real telemetry: every inference outcome is drawn from the
release's actual outputs on held-out images (and on darkened copies for devices whose input
drifts), and latency from the release's runner timed on this host. Knobs inject a slower release,
a shifted input distribution or failures into a share of the fleet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import InputError
from ..preprocess import preprocess
from ..stats import image_stats
from .telemetry import Window

__all__ = ["Knobs", "Behaviour", "SimDevice", "Fleet", "load_images"]


@dataclass
class Knobs:
    slow_release: str | None = None  # version whose latency is multiplied by ``slowdown``
    slowdown: float = 1.3
    dark_release: str | None = None  # version whose devices see darker images (input drift)
    dark_share: float = 0.0  # ... or this share of all devices, whatever they run
    darkness: float = 0.35  # brightness factor of "dark" frames
    fail_share: float = 0.0
    fail_rate: float = 0.5
    retry_share: float = 0.0  # share of uploads sent twice (as if the first answer was lost)
    # Median of a fixed log-normal latency model (sigma 0.1) instead of timing the bundle on this host: for
    # tests of the decisions, which must not depend on how noisy the host's scheduler was at that moment.
    latency_model_ms: float | None = None


class Behaviour:
    """What one release does on this host: outputs on held-out images (normal and dark), latencies."""

    def __init__(
        self,
        folder: Path,
        images: list[np.ndarray],
        darkness: float,
        bundle_key=None,
        samples: int = 200,
        latencies: dict | None = None,
        latency_model_ms: float | None = None,
    ):
        from ..tasks import get_task
        from .chain import Chain
        from .loader import open_bundle

        self.manifest, runner = open_bundle(folder, bundle_key)
        chain = isinstance(runner, Chain)  # a pipeline release: frames in, both stages counted
        self.task = get_task(None if chain else self.manifest.validation.get("task"), self.manifest.output)
        pre = self.manifest.preprocessing
        self.outputs = {}
        for kind, factor in (("normal", 1.0), ("dark", darkness)):
            frames = [np.clip(im.astype(np.float32) * factor, 0, 255).astype(np.uint8) for im in images]
            if chain:
                outcomes = runner.outcomes(frames)
            else:
                raw = np.concatenate([runner(preprocess(frames[i : i + 32], pre)) for i in range(0, len(frames), 32)])
                outcomes = self.task.outcomes(raw)
            # what a device counts of each frame (the task's post-processing), and the frame's input statistics
            self.outputs[kind] = (outcomes, np.array([image_stats(f) for f in frames]))
        # Releases that ship the very same artifact share one latency sample: timing them apart on a
        # noisy host would make identical models look 20% apart, and injected slowdowns meaningless.
        artifact = self.manifest.files[self.manifest.main_file]["sha256"]
        if latencies is not None and artifact in latencies:
            self.latency = latencies[artifact]
            return
        if latency_model_ms is not None:
            rng = np.random.default_rng(int(artifact[:8], 16))
            self.latency = latency_model_ms * np.exp(rng.normal(0.0, 0.1, 1000))
            if latencies is not None:
                latencies[artifact] = self.latency
            return
        x = images[0] if chain else preprocess(images[:1], pre)
        run = runner.infer if chain else runner
        for _ in range(5):
            run(x)
        lat = []
        for _ in range(samples):
            t0 = time.perf_counter()
            run(x)
            lat.append((time.perf_counter() - t0) * 1000)
        self.latency = np.asarray(lat)
        if latencies is not None:
            latencies[artifact] = self.latency


@dataclass
class SimDevice:
    device_id: str
    target: str
    tags: list[str]
    dark: bool = False
    failing: bool = False
    release: str | None = None  # key of the release it runs
    outbox: list = field(default_factory=list)
    switches: int = 0


class Fleet:
    def __init__(
        self,
        client,
        *,
        model: str,
        devices: int,
        targets: list[str],
        knobs: Knobs,
        images: list[np.ndarray],
        cache: Path,
        bundle_key=None,
        fleet_key=None,
        seed: int = 0,
        window_seconds: int = 60,
    ):
        self.client, self.model, self.knobs, self.images = client, model, knobs, images
        self.cache, self.bundle_key, self.fleet_key, self.window_seconds = (
            Path(cache),
            bundle_key,
            fleet_key,
            window_seconds,
        )
        self.rng = np.random.default_rng(seed)
        self.devices = []
        for i in range(devices):
            dark = self.rng.random() < knobs.dark_share
            failing = self.rng.random() < knobs.fail_share
            region = "eu" if i % 2 else "us"
            self.devices.append(
                SimDevice(f"sim-{i:05d}", targets[i % len(targets)], [f"region-{region}"], dark, failing)
            )
        self.behaviours: dict[str, Behaviour] = {}
        self._latencies: dict[str, np.ndarray] = {}  # artifact sha256 -> latency sample (ms)
        self.downloads = 0
        self.registered = False
        self._sequence: int | None = None  # the newest fleet-manifest sequence accepted (anti-rollback)

    def register(self, batch: int = 500) -> None:
        for d in self.devices:
            self.client.request(
                "POST",
                "/v1/devices",
                json={"device_id": d.device_id, "target": d.target, "tags": d.tags},
                ok=(200, 201),
            )
        self.registered = True

    def _behaviour(self, release: dict) -> Behaviour:
        key = f"{release['name']}/{release['version']}/{release['target']}"
        if key not in self.behaviours:
            from ..bundle.archive import unpack
            from .agent import check_release

            sha = check_release(release, self.model, release.get("target"))["sha256"]  # names never become paths
            archive = self.cache / f"{sha}.tar.gz"
            archive.parent.mkdir(parents=True, exist_ok=True)
            if not archive.is_file():
                self.client.download(release["url"], archive, sha, release.get("size"))
            folder = self.cache / sha[:32]
            if not folder.is_dir():
                unpack(archive, folder, trusted_keys=[self.bundle_key] if self.bundle_key is not None else None)
            self.behaviours[key] = Behaviour(
                folder,
                self.images,
                self.knobs.darkness,
                self.bundle_key,
                latencies=self._latencies,
                latency_model_ms=self.knobs.latency_model_ms,
            )
            self.downloads += 1
        return self.behaviours[key]

    def poll(self, via: str = "service") -> dict:
        """Every device asks which release to run (service per device, or one signed static manifest)."""
        from .assign import assign

        state = None
        if via == "manifest":
            from .fleetstate import verify_state

            if self.fleet_key is None:
                raise InputError(
                    "devices that read the static manifest need the fleet's public key", hint="pass --fleet-key"
                )
            state = verify_state(self.client.fleet_manifest(), self.fleet_key, min_sequence=self._sequence)
            self._sequence = state["sequence"]
        counts: dict[str, int] = {}
        for d in self.devices:
            if state is not None:
                release = assign(state, self.model, d.device_id, d.target, d.tags).release
            else:
                body, _ = self.client.assignment(self.model, d.device_id, d.target, d.tags)
                release = body["release"]
            if release is None:
                continue
            key = f"{release['name']}/{release['version']}/{release['target']}"
            if key != d.release:
                self._behaviour(release)
                d.release, d.switches = key, d.switches + 1
            counts[key] = counts.get(key, 0) + 1
        return counts

    def run_window(self, start: float, inferences: int) -> None:
        k = self.knobs
        for d in self.devices:
            if d.release is None:
                continue
            b = self.behaviours[d.release]
            version = d.release.split("/")[1]
            dark = d.dark or (k.dark_release is not None and version == k.dark_release)
            outcomes, stats = b.outputs["dark" if dark else "normal"]
            m = b.manifest
            w = Window(
                d.device_id,
                d.target,
                d.tags,
                {"name": m.name, "version": m.version, "target": m.target},
                len(b.task.telemetry_classes(m.labels)),
                start=start,
                seconds=self.window_seconds,
            )
            pick = self.rng.integers(0, len(outcomes), inferences)
            lat = b.latency[self.rng.integers(0, len(b.latency), inferences)]
            if k.slow_release is not None and version == k.slow_release:
                lat = lat * k.slowdown
            fails = self.rng.random(inferences) < (k.fail_rate if d.failing else 0.0)
            for j, i in enumerate(pick):
                w.add(float(lat[j]), None if fails[j] else outcomes[i], tuple(stats[i]))
            d.outbox.append(w.summary())

    def upload(self, batch: int = 500) -> dict:
        out = {"accepted": 0, "duplicate": 0, "rejected": 0, "retried": 0}
        pending = [(d, s) for d in self.devices for s in d.outbox]
        for i in range(0, len(pending), batch):
            chunk = [s for _, s in pending[i : i + batch]]
            results = self.client.request("POST", "/v1/telemetry/batch", json={"summaries": chunk}).json()["results"]
            if self.knobs.retry_share > 0:  # the answer "got lost": send part of it again
                again = [s for s in chunk if self.rng.random() < self.knobs.retry_share]
                if again:
                    out["retried"] += len(again)
                    for r in self.client.request("POST", "/v1/telemetry/batch", json={"summaries": again}).json()[
                        "results"
                    ]:
                        out[r["status"]] += 1
            for r in results:
                out[r["status"]] += 1
        for d in self.devices:
            d.outbox.clear()
        return out

    def simulate(
        self, windows: int, *, inferences: int = 20, via: str = "service", evaluate: bool = True, on_window=None
    ) -> list[dict]:
        """Run ``windows`` windows: poll, infer, upload, then ask the monitor to evaluate."""
        if not self.registered:
            self.register()
        history = []
        if getattr(self, "_clock", None) is None:  # windows follow one another across calls
            now = time.time()
            self._clock = now - now % self.window_seconds
        start = self._clock
        with progress.bar(f"simulating {len(self.devices)} devices", windows) as tick:
            for n in range(windows):
                t0 = time.perf_counter()
                running = self.poll(via)
                w_start = start + n * self.window_seconds
                self.run_window(w_start, inferences)
                uploaded = self.upload()
                decisions = self.client.request("POST", "/v1/evaluate").json() if evaluate else {}
                row = {
                    "window": n,
                    "window_start": w_start,
                    "running": running,
                    "uploaded": uploaded,
                    "decisions": decisions.get("decisions", []),
                    "triggers": decisions.get("triggers", []),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                history.append(row)
                self._clock = w_start + self.window_seconds
                if on_window:
                    on_window(row)
                tick(1)
        return history


def load_images(dataset: str, split: str = "test", limit: int = 256) -> list[np.ndarray]:
    """Held-out images of a dataset, the frames simulated devices see."""
    import cv2

    from ..data.manifest import load_manifest

    m = load_manifest(dataset)
    # ordered by content hash, not path: a prefix of a path-sorted list holds only the first few
    # classes, and the fleet would "drift" from the reference class mix before anything changed
    recs = sorted(m.subset(split), key=lambda r: r.sha256)[:limit]
    return [img for img in (cv2.imread(str(m.resolve(r)), cv2.IMREAD_COLOR) for r in recs) if img is not None]
