"""Telemetry summaries merged: counts and fixed-bucket histograms add up exactly across devices."""

from __future__ import annotations

import numpy as np

from ..stats import HISTOGRAMS

__all__ = ["merge"]


def merge(summaries: list[dict]) -> dict:
    """Add up summaries of one release: counts and histograms merge exactly."""
    out = {"count": 0, "errors": 0, "devices": set()} | {
        k: np.zeros(len(e) - 1, np.int64) for k, e in HISTOGRAMS.items()
    }
    classes = None
    for s in summaries:
        out["count"] += s["count"]
        out["errors"] += s["errors"]
        out["devices"].add(s["device_id"])
        for k in HISTOGRAMS:
            out[k] += np.asarray(s[k], np.int64)
        pc = np.asarray(s["predicted_class"], np.int64)
        if classes is None:
            classes = pc.copy()
        else:
            if pc.size > classes.size:
                classes = np.pad(classes, (0, pc.size - classes.size))
            classes[: pc.size] += pc
    out["predicted_class"] = classes if classes is not None else np.zeros(0, np.int64)
    out["devices"] = len(out["devices"])
    return out
