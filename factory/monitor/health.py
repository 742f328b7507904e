"""Release health from merged telemetry, and the rules that advance or halt a rollout stage.

Pure functions on numbers: the registry reads telemetry rows and rollout state from its database
and hands them here (:mod:`factory.registry.health`); nothing in this package touches a database.

Per window, the new release's devices are compared with:
- the bundle's reference profile (drift: PSI of confidence, brightness and contrast histograms,
  JS of the predicted-class mix);
- the previous release's devices in the same window (latency p95 ratio: both measured on devices);
- the error rate.
A window is judged only when it holds ``min_inferences``. ``windows_to_halt`` consecutive unhealthy
windows roll the stage back (with the evidence in the audit log); a stage that has run its minimum
duration with enough devices reporting and a healthy last window advances.
"""

from __future__ import annotations

from ..stats import HISTOGRAMS, percentile_from_hist
from .drift import js_divergence, psi
from .summaries import cap_weights, combine, without

__all__ = ["window_figures", "judge", "judge_window", "decide"]

DEVICE_WEIGHT_CAP = 2.0  # a device counts for at most this many times the median device of its window
_MOST_INFLUENTIAL = 50  # devices checked for carrying a verdict alone (by weight, and by errors)


def window_figures(merged: dict, reference: dict) -> dict:
    """Count, error rate, p50/p95 and drift of one merged window against the release's reference."""
    prof = reference.get("profile", {})
    ok = merged["count"] - merged["errors"]
    fig = {
        "count": int(round(merged["count"])),
        "errors": int(round(merged["errors"])),
        "devices": merged["devices"],
        "error_rate": merged["errors"] / merged["count"] if merged["count"] else None,
        "p50_ms": percentile_from_hist(merged["latency_ms"], HISTOGRAMS["latency_ms"], 50) if ok else None,
        "p95_ms": percentile_from_hist(merged["latency_ms"], HISTOGRAMS["latency_ms"], 95) if ok else None,
    }
    drift = {}
    for sig in ("confidence", "brightness", "contrast"):
        if sig in prof:
            drift[f"psi_{sig}"] = psi(prof[sig]["counts"], merged[sig])
    if "predicted_class" in prof:
        ref = prof["predicted_class"]["counts"]
        drift["psi_class"] = psi(
            ref, list(merged["predicted_class"]) + [0] * max(0, len(ref) - len(merged["predicted_class"]))
        )
        drift["js_class"] = js_divergence(ref, merged["predicted_class"])
    fig["drift"] = drift
    return fig


def judge(fig: dict, prev: dict | None, rules: dict) -> dict:
    """Every rule measured, then the verdict: {"healthy": bool|None, "violations": [...]} (None: too few)."""
    if fig["count"] < rules["min_inferences"]:
        return {"healthy": None, "violations": [], "why": f"{fig['count']} inferences < {rules['min_inferences']}"}
    v = []
    if fig["error_rate"] is not None and fig["error_rate"] > rules["max_error_rate"]:
        v.append(f"error rate {fig['error_rate']:.3f} > {rules['max_error_rate']}")
    if prev and prev.get("p95_ms") and fig.get("p95_ms"):
        ratio = fig["p95_ms"] / prev["p95_ms"]
        fig["latency_p95_ratio"] = ratio
        if ratio > rules["max_latency_p95_ratio"]:
            v.append(
                f"p95 {fig['p95_ms']:.2f} ms is {ratio:.2f}x the previous release's {prev['p95_ms']:.2f} ms (> "
                f"{rules['max_latency_p95_ratio']})"
            )
    for k, val in fig["drift"].items():
        if val is None:
            continue
        limit = rules["max_js"] if k.startswith("js") else rules["max_psi"]
        if val > limit:
            v.append(f"{k} {val:.3f} > {limit}")
    return {"healthy": not v, "violations": v}


def judge_window(devices: dict[str, dict], reference: dict, prev: dict | None, rules: dict) -> tuple[dict, dict]:
    """Figures and verdict of one window judged with the device as the unit of trust.

    ``devices``: device id -> that device's merged summaries. Each device's weight is capped
    (:func:`~factory.monitor.summaries.cap_weights`); a window found unhealthy is checked again
    without each of its most influential devices, and if leaving one device out makes it healthy,
    the violations rest on that device alone: the window is healthy and the verdict names the device.
    """
    capped = cap_weights(devices, DEVICE_WEIGHT_CAP)
    total = combine(capped)
    fig = window_figures(total, reference)
    verdict = judge(fig, prev, rules)
    if verdict["healthy"] is False and len(capped) > 1:
        by_weight = sorted(capped, key=lambda d: -capped[d]["count"])[:_MOST_INFLUENTIAL]
        by_errors = sorted(capped, key=lambda d: -capped[d]["errors"])[:_MOST_INFLUENTIAL]
        for dev in dict.fromkeys(by_weight + by_errors):
            alone = without(total, capped[dev])
            if judge(window_figures(alone, reference), prev, rules)["healthy"]:
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
    if "latency_p95_ratio" in fig:
        figures["latency_p95_ratio"] = fig["latency_p95_ratio"]
    return {"window_start": w, "target": target, "violations": verdict["violations"], "figures": figures}


def decide(verdicts: list[tuple], rules: dict, stage: dict, stage_number: int, elapsed_min: float) -> dict | None:
    """What the stage's windows call for: ``{"action": "rollback"|"advance", "reason", "evidence"}`` or None.

    ``verdicts`` are ``(window_start, target, figures, verdict)`` of every window the stage owns.
    """
    verdicts = sorted(verdicts, key=lambda x: x[0])
    judged = [v for v in verdicts if v[3]["healthy"] is not None]
    streak = []
    for v in reversed(judged):
        if v[3]["healthy"]:
            break
        streak.append(v)
    devices = sum(v[2]["devices"] for v in verdicts if v[0] == (verdicts[-1][0] if verdicts else None))
    unhealthy_windows = len({v[0] for v in streak})
    if unhealthy_windows >= rules["windows_to_halt"] and rules["auto_rollback"]:
        return {
            "action": "rollback",
            "reason": f"{unhealthy_windows} consecutive unhealthy windows in stage {stage_number}",
            "evidence": {"windows": [_evidence(v) for v in reversed(streak)]},
        }
    healthy_last = bool(judged) and judged[-1][3]["healthy"]
    if (
        rules["auto_advance"]
        and healthy_last
        and not streak
        and elapsed_min >= stage["min_duration_minutes"]
        and devices >= stage["min_devices_reporting"]
    ):
        last = judged[-1]
        return {
            "action": "advance",
            "reason": f"stage {stage_number} healthy for {elapsed_min:.1f} min with {devices} devices",
            "evidence": {
                "window_start": last[0],
                "figures": {k: last[2][k] for k in ("count", "error_rate", "p95_ms")} | last[2]["drift"],
            },
        }
    return None
