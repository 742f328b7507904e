"""Field capture on a device: keep a frame when the rollout's plan asks for it, upload it with the device's
own credential. Nothing is captured unless the device's current assignment carries a capture policy
(the plan's ``capture`` block, opt-in); the policy's caps are kept on the device too (per day, bytes).

A frame is kept when its outcome's confidence is below ``when.max_confidence``, when the device's recent
frames drift (the brightness PSI of its last frames against the bundle's reference profile is above
``when.drifting``), or at random (``when.random_rate``). Kept frames wait in ``outbox/captures`` (JPEG
plus metadata, written to a temp name and renamed) until an upload succeeds; a capture the registry
refuses for good (403, 413, 422) is dropped, one it throttles (429) or cannot take now stays.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from .._io import atomic_write
from ..stats import BRIGHTNESS_EDGES, histogram

__all__ = ["Capturer", "capture_reason"]

log = logging.getLogger("factory.device")
RECENT = 60  # frames whose brightness the drifting condition compares with the reference


def _psi(reference: list[int], observed: list[int], eps: float = 1e-4) -> float:
    r = np.maximum(np.asarray(reference, np.float64) / max(sum(reference), 1), eps)
    o = np.maximum(np.asarray(observed, np.float64) / max(sum(observed), 1), eps)
    r, o = r / r.sum(), o / o.sum()
    return float(np.sum((o - r) * np.log(o / r)))


def capture_reason(policy: dict, confidence: float, drift_psi: float | None, draw: float) -> str | None:
    """Why this frame is kept under ``policy`` (None: it is not)."""
    when = policy.get("when") or {}
    if "max_confidence" in when and confidence < when["max_confidence"]:
        return "low_confidence"
    if "drifting" in when and drift_psi is not None and drift_psi > when["drifting"]:
        return "drifting"
    if "random_rate" in when and draw < when["random_rate"]:
        return "random"
    return None


class Capturer:
    """One device's captures: the decision per frame, the on-disk outbox, the daily cap, the upload."""

    def __init__(self, folder: Path, device_id: str, seed: int | None = None):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.rng = np.random.default_rng(seed)
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.counts_path = folder / "counts.json"

    def _today(self, now: float) -> tuple[str, int]:
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        try:
            counts = json.loads(self.counts_path.read_text()) if self.counts_path.is_file() else {}
        except (ValueError, OSError):
            counts = {}
        return day, int(counts.get(day, 0)) if isinstance(counts, dict) else 0

    def _count(self, day: str, n: int) -> None:
        atomic_write(self.counts_path, json.dumps({day: n}).encode())

    def drift_psi(self, reference: dict | None) -> float | None:
        """Brightness PSI of the recent frames against the bundle's reference (None: too few frames yet)."""
        if not reference or "brightness" not in reference or len(self.recent) < RECENT // 2:
            return None
        return _psi(reference["brightness"]["counts"], histogram(list(self.recent), BRIGHTNESS_EDGES))

    def consider(self, frame: np.ndarray, outcome: dict, output, stats: tuple[float, float], *, policy: dict | None,
                 release: dict, rollout: str | None, reference: dict | None, window_start: float | None,
                 now: float) -> str | None:  # fmt: skip
        """Keep ``frame`` if ``policy`` asks for it; returns the reason it was kept, or None."""
        self.recent.append(stats[0])
        if not policy or not rollout:
            return None  # consent: no capture block in the plan, no capture
        reason = capture_reason(
            policy, float(outcome["confidence"]), self.drift_psi(reference), float(self.rng.random())
        )
        if reason is None:
            return None
        day, n = self._today(now)
        if n >= policy["max_per_device_per_day"]:
            return None
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok or len(buf) > policy["max_bytes"]:
            return None  # bigger than the plan allows: not kept (the registry would refuse it)
        key = f"{self.device_id}:{int(now * 1000)}:{uuid.uuid4().hex[:12]}"
        body = {
            "idempotency_key": key,
            "device_id": self.device_id,
            "rollout": rollout,
            "release": release,
            "window_start": window_start,
            "reason": reason,
            "output": output,
            "image": base64.b64encode(buf.tobytes()).decode(),
        }
        atomic_write(self.folder / f"{int(now * 1000)}-{key.rsplit(':', 1)[1]}.json", json.dumps(body).encode())
        self._count(day, n + 1)
        return reason

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.json") if p.name != "counts.json")

    def upload(self, client) -> dict:
        """Send what waits; drop what the registry refuses for good, keep the rest for later."""
        from ..errors import FactoryError

        sent = dropped = 0
        for path in self.pending():
            try:
                body = json.loads(path.read_text())
            except (ValueError, OSError):
                path.unlink(missing_ok=True)
                dropped += 1
                continue
            try:
                r = client.request("POST", "/v1/captures", json=body, ok=(200, 201, 403, 413, 422))
            except (FactoryError, OSError) as exc:  # offline, throttled (429), a 5xx: keep it for later
                log.info("capture upload deferred: %s", str(exc).splitlines()[0][:200])
                break
            if r.status_code in (200, 201):
                sent += 1
            else:
                dropped += 1
                log.warning("capture refused (%s): %s", r.status_code, r.text[:300])
            path.unlink(missing_ok=True)
        return {"sent": sent, "dropped": dropped, "waiting": len(self.pending())}
