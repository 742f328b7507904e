"""Telemetry summaries merged: counts and fixed-bucket histograms add up exactly across devices.

For health decisions the device is the unit of trust: :func:`by_device` merges each device's
summaries of a window, :func:`cap_weights` bounds what any one device contributes (at most a small
multiple of the median device's count), and :func:`combine` gives the window's totals over any set
of devices (all of them, or all but one, to check whether a verdict rests on a single device).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..stats import HISTOGRAMS, TASK_HISTOGRAMS

__all__ = ["merge", "by_device", "cap_weights", "combine"]

_ARRAYS = (*HISTOGRAMS, "predicted_class")  # task histograms (objects, box_area) are added when present


def _empty() -> dict:
    return {"count": 0, "errors": 0, "devices": 0, "predicted_class": np.zeros(0)} | {
        k: np.zeros(len(e) - 1) for k, e in HISTOGRAMS.items()
    }


def _add(out: dict, s: dict) -> None:
    out["count"] += s["count"]
    out["errors"] += s["errors"]
    for k in HISTOGRAMS:
        out[k] = out[k] + np.asarray(s[k], np.float64)
    for k, edges in TASK_HISTOGRAMS.items():
        if k in s:
            out[k] = out.get(k, np.zeros(len(edges) - 1)) + np.asarray(s[k], np.float64)
    pc = np.asarray(s["predicted_class"], np.float64)
    if pc.size > out["predicted_class"].size:
        out["predicted_class"] = np.pad(out["predicted_class"], (0, pc.size - out["predicted_class"].size))
    out["predicted_class"][: pc.size] += pc


def merge(summaries: list[dict]) -> dict:
    """Add up summaries of one release: counts and histograms merge exactly."""
    out = _empty()
    devices = set()
    for s in summaries:
        _add(out, s)
        devices.add(s["device_id"])
    out["devices"] = len(devices)
    return out


def by_device(summaries: list[dict]) -> dict[str, dict]:
    """Each device's summaries of a window merged into one (device id -> merged)."""
    groups: dict[str, list] = defaultdict(list)
    for s in summaries:
        groups[s["device_id"]].append(s)
    return {d: merge(g) for d, g in groups.items()}


def _scaled(m: dict, factor: float) -> dict:
    out = dict(m)
    for k in ("count", "errors"):
        out[k] = m[k] * factor
    for k in (*_ARRAYS, *TASK_HISTOGRAMS):
        if k in m:
            out[k] = np.asarray(m[k], np.float64) * factor
    return out


def cap_weights(devices: dict[str, dict], factor: float = 2.0) -> dict[str, dict]:
    """Scale down any device that reports more than ``factor`` x the median device's count.

    Honest devices of one release run at similar rates, so this leaves them as they are; a device
    that claims a billion inferences counts as two typical ones, not as the fleet.
    """
    if not devices:
        return {}
    cap = max(1.0, factor * float(np.median([d["count"] for d in devices.values()])))
    return {k: (_scaled(d, cap / d["count"]) if d["count"] > cap else d) for k, d in devices.items()}


def combine(devices: dict[str, dict]) -> dict:
    """The window's totals over (capped) devices."""
    out = _empty()
    for d in devices.values():
        _add(out, d)
    out["devices"] = len(devices)
    return out
