"""On-device telemetry: compact, mergeable summaries per device per window. Never raw images.

A summary is counts only: inferences, errors, and fixed-bucket histograms of latency (log-spaced),
top-1 confidence, predicted class and input brightness/contrast; a task that finds objects adds
objects per frame and box areas (what the frame's outcome is comes from the task:
:meth:`factory.tasks.Task.outcomes`). Bucket edges are protocol constants
(:mod:`factory.stats`), so any two summaries of a release merge by adding counts. Each
summary carries an idempotency key: a retried upload is stored once.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..stats import (
    BRIGHTNESS_EDGES,
    CONFIDENCE_EDGES,
    CONTRAST_EDGES,
    HISTOGRAMS,
    LATENCY_EDGES_MS,
    TASK_HISTOGRAMS,
    histogram,
)

__all__ = ["SCHEMA", "Window", "validate_summary"]

SCHEMA = "factory.telemetry/2"  # 2: latency buckets start at 5 us (1: 50 us)
_ID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


@dataclass
class Window:
    """Accumulates one window of inferences on a device."""

    device_id: str
    target: str
    tags: list[str]
    release: dict  # {name, version, target}
    n_classes: int
    start: float = field(default_factory=time.time)
    seconds: int = 60
    count: int = 0
    errors: int = 0
    latency: list[float] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    brightness: list[float] = field(default_factory=list)
    contrast: list[float] = field(default_factory=list)
    objects: list[int] = field(default_factory=list)
    box_areas: list[float] = field(default_factory=list)

    def add(self, latency_ms: float, outcome: dict | None, stats: tuple[float, float]) -> None:
        """One inference: its outcome (``{"confidence", "cls"}``, plus ``"objects"`` and ``"box_areas"`` when
        the task finds objects; None when the inference failed) and its input's (brightness, contrast)."""
        self.count += 1
        self.brightness.append(stats[0])
        self.contrast.append(stats[1])
        if outcome is None:
            self.errors += 1
            return
        self.latency.append(latency_ms)
        self.confidence.append(float(outcome["confidence"]))
        self.classes.append(int(outcome["cls"]))
        if "objects" in outcome:
            self.objects.append(int(outcome["objects"]))
            self.box_areas.extend(float(a) for a in outcome["box_areas"])

    def summary(self) -> dict:
        return {
            "schema": SCHEMA,
            "idempotency_key": f"{self.device_id}:{int(self.start * 1000)}:{uuid.uuid4().hex[:12]}",
            "device_id": self.device_id,
            "target": self.target,
            "tags": list(self.tags),
            "release": self.release,
            "window": {"start": self.start, "seconds": self.seconds},
            "count": self.count,
            "errors": self.errors,
            "latency_ms": histogram(self.latency, LATENCY_EDGES_MS),
            "confidence": histogram(self.confidence, CONFIDENCE_EDGES),
            "predicted_class": np.bincount(np.asarray(self.classes, int), minlength=self.n_classes)
            .astype(int)
            .tolist(),
            "brightness": histogram(self.brightness, BRIGHTNESS_EDGES),
            "contrast": histogram(self.contrast, CONTRAST_EDGES),
            **(
                {
                    "objects": histogram(self.objects, TASK_HISTOGRAMS["objects"]),
                    "box_area": histogram(self.box_areas, TASK_HISTOGRAMS["box_area"]),
                }
                if self.objects
                else {}
            ),  # fmt: skip
        }


def _counts(v, n: int | None, where: str) -> list[int]:
    if not isinstance(v, list) or (n is not None and len(v) != n) or len(v) > 4096:
        raise InputError(f"{where} must be a list of {n if n is not None else 'at most 4096'} counts")
    # type(x) is int rules out bools and floats; map/set/min/max run in C (this is the ingest hot path)
    if v and (set(map(type, v)) != {int} or min(v) < 0 or max(v) > 10**9):
        raise InputError(f"{where} must hold non-negative integer counts")
    return v


def validate_summary(
    s: object,
    *,
    max_bytes: int = 65536,
    now: float | None = None,
    max_age_days: float = 7,
    encoded: str | None = None,
    max_rate: float | None = None,
) -> dict:
    """Check a summary's shape and internal consistency; raise InputError (-> 4xx) saying what is wrong.

    ``encoded`` is the summary's JSON text when the caller has it already (the size check uses it).
    """
    if not isinstance(s, dict):
        raise InputError("a telemetry summary is a JSON object")
    if len(encoded if encoded is not None else json.dumps(s)) > max_bytes:
        raise InputError(f"summary larger than {max_bytes} bytes")
    if s.get("schema") != SCHEMA:
        raise InputError(f"schema must be {SCHEMA!r}")
    for k in ("idempotency_key", "device_id", "target"):
        v = s.get(k)
        if not isinstance(v, str) or not 0 < len(v) <= 200 or not set(v) <= _ID:
            raise InputError(f"{k} must be 1-200 characters of [A-Za-z0-9._:-]")
    rel = s.get("release")
    if not isinstance(rel, dict) or not all(
        isinstance(rel.get(k), str) and rel.get(k) for k in ("name", "version", "target")
    ):
        raise InputError("release must be {name, version, target}")
    tags = s.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 50 or not all(isinstance(t, str) and len(t) <= 100 for t in tags):
        raise InputError("tags must be a list of at most 50 short strings")
    w = s.get("window")
    if not isinstance(w, dict) or not isinstance(w.get("start"), (int, float)) or not isinstance(w.get("seconds"), int):
        raise InputError("window must be {start: epoch seconds, seconds: int}")
    now = time.time() if now is None else now
    if (
        not (now - max_age_days * 86400 <= w["start"] <= now + 300)
        or not 1 <= w["seconds"] <= 86400
        or not math.isfinite(w["start"])
    ):
        raise InputError("window start is in the future or too old, or its length is out of range")
    count, errors = s.get("count"), s.get("errors")
    if (
        not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 10**9 for x in (count, errors))
        or errors > count
    ):
        raise InputError("count and errors must be integers with 0 <= errors <= count")
    if max_rate is not None and count > max_rate * w["seconds"]:
        raise InputError(
            f"count {count} is more than {max_rate:g} inferences per second over a {w['seconds']} s window",
            hint="a device reports what it ran; the registry's telemetry.max_inferences_per_second bounds it",
        )
    sync = s.get("sync_errors", 0)
    if not isinstance(sync, int) or isinstance(sync, bool) or not 0 <= sync <= 10**6:
        raise InputError("sync_errors must be a non-negative integer")
    ok = count - errors
    for name, edges in HISTOGRAMS.items():
        _counts(s.get(name), len(edges) - 1, name)
    if sum(s["latency_ms"]) != ok or sum(s["confidence"]) != ok:
        raise InputError("latency and confidence histograms must count every successful inference")
    if sum(s["brightness"]) != count or sum(s["contrast"]) != count:
        raise InputError("input histograms must count every inference")
    if sum(_counts(s.get("predicted_class"), None, "predicted_class")) != ok:
        raise InputError("predicted_class must count every successful inference")
    if ("objects" in s) != ("box_area" in s):
        raise InputError("objects and box_area come together (a task that finds objects reports both)")
    if "objects" in s:
        for name, edges in TASK_HISTOGRAMS.items():
            _counts(s.get(name), len(edges) - 1, name)
        if sum(s["objects"]) != ok:
            raise InputError("objects must count every successful inference")
        if sum(s["box_area"]) > 1000 * max(ok, 1):
            raise InputError("box_area counts more objects than 1000 per inference")
    return s
