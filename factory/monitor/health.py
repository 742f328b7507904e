"""Release health from merged telemetry, and the rules that advance or halt a rollout stage.

Pure functions on numbers: the registry reads telemetry rows and rollout state from its database
and hands them here (:mod:`factory.registry.health`); nothing in this package touches a database.

Per window and target, the new release's devices are compared with:
- the bundle's reference profile (drift: PSI of confidence, brightness and contrast histograms, and of
  objects per frame and box areas for tasks that find objects,
  JS of the predicted-class mix), each failing only when the chi-square test of the two histograms
  is significant at ``drift_alpha`` as well (:mod:`.rules`);
- the previous release's devices in the same window (latency: neither the typical latency, a
  geometric mean, nor the share of inferences slower than ``max_latency_p95_ratio`` x the previous
  release's p95, which must stay within 5%, may be beyond the limit with confidence ``1 - alpha``);
- the error-rate limit (the error rate's lower confidence bound must not be above it).
The device is the unit of trust: each device's weight is capped, shares are judged on an effective
sample size over devices, and a verdict that rests on one device alone does not fail a window.
A window is judged only when it holds ``min_inferences``. A window is unhealthy when any target is;
``windows_to_halt`` consecutive unhealthy windows roll the stage back (with the evidence in the audit
log); a stage that has run its minimum duration with enough devices reporting advances when every
target's last judged window is healthy.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..stats import HISTOGRAMS, percentile_from_hist
from .drift import js_divergence
from .rules import histogram_test, log_mean, share_above, share_test, smoothed_psi, z_of
from .summaries import cap_weights, combine

__all__ = ["window_figures", "judge", "judge_window", "decide", "ALPHA", "DRIFT_ALPHA"]

DEVICE_WEIGHT_CAP = 2.0  # a device counts for at most this many times the median device of its window
_MOST_INFLUENTIAL = 50  # devices checked for carrying a verdict alone (by weight, and by errors)
ALPHA = 0.01  # default false-alarm probability of the error and latency rules in one window, at their limit
DRIFT_ALPHA = 0.001  # ... and of each drift signal (four per window; PSI is noisiest where windows are small)
_TAIL = 0.05  # p95: at most 5% of inferences may be slower than the limit
_P95_UPPER_Z = z_of(0.05)  # the previous release's p95 is taken at its 95% upper confidence bound


def window_figures(merged: dict, reference: dict, devices: dict | None = None) -> dict:
    """Count, error rate, p50/p95 and drift of one merged window against the release's reference
    (``devices``, the window's devices, make the device the unit of the latency figures' error)."""
    prof = reference.get("profile", {})
    ok = merged["count"] - merged["errors"]
    lat = merged["latency_ms"]
    fig = {
        "count": int(round(merged["count"])),
        "errors": int(round(merged["errors"])),
        "devices": merged["devices"],
        "error_rate": merged["errors"] / merged["count"] if merged["count"] else None,
        "p50_ms": percentile_from_hist(lat, HISTOGRAMS["latency_ms"], 50) if ok else None,
        "p95_ms": percentile_from_hist(lat, HISTOGRAMS["latency_ms"], 95) if ok else None,
        "p95_upper_ms": None,
    }
    if ok:
        n = float(np.sum(lat))
        q = min(99.99, 100 * (1 - _TAIL + _P95_UPPER_Z * np.sqrt(_TAIL * (1 - _TAIL) / max(n, 1.0))))
        fig["p95_upper_ms"] = percentile_from_hist(lat, HISTOGRAMS["latency_ms"], q)
    hists = [d["latency_ms"] for d in devices.values()] if devices else [lat]
    fig["log_latency"] = log_mean(hists, HISTOGRAMS["latency_ms"])
    drift = {}
    for sig in ("confidence", "brightness", "contrast", "objects", "box_area"):
        if sig in prof and sig in merged:  # objects and box area: tasks that find objects (detection)
            drift[f"psi_{sig}"] = smoothed_psi(prof[sig]["counts"], merged[sig])
    if "predicted_class" in prof:
        drift["js_class"] = js_divergence(prof["predicted_class"]["counts"], merged["predicted_class"])
    fig["drift"] = drift
    return fig


def _typical_ratio(new: dict | None, prev: dict | None, alpha: float) -> tuple[float, float] | None:
    """(ratio, its lower confidence bound) of the geometric-mean latency of two windows."""
    if not new or not prev or new.get("mean") is None or prev.get("mean") is None:
        return None
    d = new["mean"] - prev["mean"]
    se = float(np.hypot(new["se"], prev["se"]))
    return float(np.exp(d)), float(np.exp(d - z_of(alpha) * se))


def _drift_hist(sig: str, merged: dict, prof: dict) -> tuple | None:
    name = "predicted_class" if sig == "js_class" else sig[len("psi_") :]
    if name not in prof:
        return None
    return prof[name]["counts"], merged[name]


def judge(devices: dict[str, dict], reference: dict, prev: dict | None, rules: dict) -> tuple[dict, dict]:
    """Figures of one window's (capped) devices and the verdict of every rule:
    ``{"healthy": bool|None, "violations": [...]}`` (None: too few inferences to judge)."""
    total = combine(devices)
    fig = window_figures(total, reference, devices)
    if fig["count"] < rules["min_inferences"]:
        return fig, {"healthy": None, "violations": [], "why": f"{fig['count']} inferences < {rules['min_inferences']}"}
    alpha = rules.get("alpha", ALPHA)
    counts = np.array([d["count"] for d in devices.values()], np.float64)
    v = []
    err = share_test([d["errors"] for d in devices.values()], counts, rules["max_error_rate"], alpha)
    if err["exceeds"]:
        v.append(
            f"error rate {err['share']:.3f} > {rules['max_error_rate']} (at least {err['lower']:.3f} with "
            f"{1 - alpha:.1%} confidence)"
        )
    if prev and prev.get("p95_ms") and fig.get("p95_ms"):
        fig["latency_p95_ratio"] = fig["p95_ms"] / prev["p95_ms"]
        limit = rules["max_latency_p95_ratio"] * (prev.get("p95_upper_ms") or prev["p95_ms"])
        edges = HISTOGRAMS["latency_ms"]
        slow = share_test(
            [share_above(d["latency_ms"], edges, limit) for d in devices.values()],
            [float(np.sum(d["latency_ms"])) for d in devices.values()],
            _TAIL,
            alpha,
        )
        fig["slower_than_limit"] = slow["share"]
        typical = _typical_ratio(fig["log_latency"], prev.get("log_latency"), alpha)
        if typical is not None:
            fig["typical_latency_ratio"] = typical[0]
            if typical[1] > rules["max_latency_p95_ratio"]:
                v.append(
                    f"typical latency (geometric mean) is {typical[0]:.2f}x the previous release's (at least "
                    f"{typical[1]:.2f}x with {1 - alpha:.1%} confidence; limit {rules['max_latency_p95_ratio']}x)"
                )
        if slow["exceeds"]:
            v.append(
                f"p95 {fig['p95_ms']:.2f} ms is {fig['latency_p95_ratio']:.2f}x the previous release's "
                f"{prev['p95_ms']:.2f} ms: {slow['share']:.1%} of inferences are slower than "
                f"{rules['max_latency_p95_ratio']}x its p95 (at least {slow['lower']:.1%} with {1 - alpha:.1%} "
                f"confidence; at most {_TAIL:.0%} may be)"
            )
    prof = reference.get("profile", {})
    for sig, val in fig["drift"].items():
        pair = _drift_hist(sig, total, prof)
        limit = rules["max_js"] if sig.startswith("js") else rules["max_psi"]
        if val is None or pair is None or val <= limit:
            continue
        test = histogram_test(*pair, rules.get("drift_alpha", DRIFT_ALPHA))
        if test["significant"]:
            v.append(
                f"{sig} {val:.3f} > {limit} (chi-square {test['chi2']:.1f} > {test['critical']:.1f}, "
                f"{test['df']} df, alpha {rules.get('drift_alpha', DRIFT_ALPHA):g})"
            )
    return fig, {"healthy": not v, "violations": v}


def judge_window(devices: dict[str, dict], reference: dict, prev: dict | None, rules: dict) -> tuple[dict, dict]:
    """Figures and verdict of one window judged with the device as the unit of trust.

    ``devices``: device id -> that device's merged summaries. Each device's weight is capped
    (:func:`~factory.monitor.summaries.cap_weights`); a window found unhealthy is checked again
    without each of its most influential devices, and if leaving one device out makes it healthy,
    the violations rest on that device alone: the window is healthy and the verdict names the device.
    """
    capped = cap_weights(devices, DEVICE_WEIGHT_CAP)
    fig, verdict = judge(capped, reference, prev, rules)
    if verdict["healthy"] is False and len(capped) > 1:
        by_weight = sorted(capped, key=lambda d: -capped[d]["count"])[:_MOST_INFLUENTIAL]
        by_errors = sorted(capped, key=lambda d: -capped[d]["errors"])[:_MOST_INFLUENTIAL]
        for dev in dict.fromkeys(by_weight + by_errors):
            rest = {k: d for k, d in capped.items() if k != dev}
            if judge(rest, reference, prev, rules)[1]["healthy"]:
                verdict = {
                    "healthy": True,
                    "violations": [],
                    "single_device": {"device_id": dev, "violations": verdict["violations"]},
                    "why": f"the violations rest on device {dev} alone: one device cannot fail a window",
                }
                break
    return fig, verdict


def _evidence(v: tuple) -> dict:
    w, target, fig, verdict = v
    figures = {k: fig[k] for k in ("count", "errors", "error_rate", "p95_ms", "devices")} | fig["drift"]
    for k in ("latency_p95_ratio", "typical_latency_ratio", "slower_than_limit"):
        if k in fig:
            figures[k] = fig[k]
    return {"window_start": w, "target": target, "violations": verdict["violations"], "figures": figures}


def decide(
    verdicts: list[tuple],
    rules: dict,
    stage: dict,
    stage_number: int,
    elapsed_min: float,
    targets: list[str] | None = None,
) -> dict | None:
    """What the stage's windows call for: ``{"action": "rollback"|"advance", "reason", "evidence"}`` or None.

    ``verdicts`` are ``(window_start, target, figures, verdict)`` of every window the stage owns;
    to advance, every target in ``targets`` (default: every target that reported in the stage, so a
    target whose windows were all too small to judge holds the stage) needs a healthy last judged window.
    A window is unhealthy when any target's verdict is; a window where every judged target is
    healthy ends a streak; a window nobody could judge neither extends nor ends it.
    """
    windows: dict[float, list[tuple]] = defaultdict(list)
    for v in verdicts:
        windows[v[0]].append(v)
    streak: list[list[tuple]] = []
    for w in sorted(windows, reverse=True):
        judged = [v for v in windows[w] if v[3]["healthy"] is not None]
        if not judged:
            continue
        bad = [v for v in judged if v[3]["healthy"] is False]
        if not bad:
            break
        streak.append(bad)
    if len(streak) >= rules["windows_to_halt"] and rules["auto_rollback"]:
        named = sorted({v[1] for bad in streak for v in bad})
        return {
            "action": "rollback",
            "reason": f"{len(streak)} consecutive unhealthy windows in stage {stage_number} ({', '.join(named)})",
            "evidence": {"windows": [_evidence(v) for bad in reversed(streak) for v in bad]},
        }
    last: dict[str, tuple] = {}
    for v in sorted(verdicts, key=lambda x: x[0]):
        if v[3]["healthy"] is not None:
            last[v[1]] = v
    need = set(targets) if targets else {v[1] for v in verdicts}  # a target that reported must be judged healthy
    all_healthy = bool(need) and all(t in last and last[t][3]["healthy"] for t in need)
    devices = sum(v[2]["devices"] for v in last.values())
    if (
        rules["auto_advance"]
        and all_healthy
        and not streak
        and elapsed_min >= stage["min_duration_minutes"]
        and devices >= stage["min_devices_reporting"]
    ):
        return {
            "action": "advance",
            "reason": f"stage {stage_number} healthy for {elapsed_min:.1f} min with {devices} devices",
            "evidence": {
                t: {
                    "window_start": v[0],
                    "figures": {k: v[2][k] for k in ("count", "error_rate", "p95_ms")} | v[2]["drift"],
                }
                for t, v in sorted(last.items())
            },
        }
    return None
