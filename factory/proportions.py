"""Intervals for accuracy on a finite test split, and the non-inferiority rule built on them.

A drop in top-1 is a difference of two *paired* proportions: the same images, judged by the reference
and by the candidate. What carries information is the discordant images: ``lost`` (the reference
right, the candidate wrong) and ``gained`` (the other way). :func:`tango_interval` is Tango's (1998)
asymptotic score interval for that difference: unlike a bootstrap it does not collapse to a point when
no image disagrees (with 0 of 481 disagreeing, a drop of up to 0.79 points is still consistent with
the data). :func:`wilson_interval` is the score interval of one proportion (top-1 agreement).

A budget's ``max_accuracy_drop_pt`` is a non-inferiority margin (:func:`non_inferiority`): the check
passes when the interval's upper end is within the margin, fails when its lower end is beyond it, and is
otherwise *inconclusive*: the test split is too small to tell, and the verdict says how many images
would. All intervals are two-sided at the stated confidence.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["z_value", "tango_interval", "wilson_interval", "non_inferiority", "at_least", "images_to_resolve"]


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _tango_t(theta: float, lost: float, gained: float, n: float) -> float:
    # constrained maximum-likelihood estimate of P(gained) under the difference theta (Tango 1998)
    b = -(lost + gained) + (2 * n - lost + gained) * theta
    p21 = (math.sqrt(max(b * b + 8 * n * gained * theta * (1 - theta), 0.0)) - b) / (4 * n)
    var = n * (2 * p21 + theta * (1 - theta))
    return (
        (lost - gained - n * theta) / math.sqrt(var) if var > 0 else math.copysign(math.inf, lost - gained - n * theta)
    )


def _root(f, lo: float, hi: float) -> float:
    flo = f(lo)
    for _ in range(200):
        mid = (lo + hi) / 2
        fm = f(mid)
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def tango_interval(lost: float, gained: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of (lost - gained) / n, the drop as a fraction, for ``n`` paired images."""
    if n <= 0:
        return -1.0, 1.0
    z, eps = z_value(confidence), 1e-12
    est = (lost - gained) / n
    lo = -1.0 if est <= -1 else _root(lambda t: _tango_t(t, lost, gained, n) - z, -1 + eps, min(est, 1 - eps))
    hi = 1.0 if est >= 1 else _root(lambda t: _tango_t(t, lost, gained, n) + z, max(est, -1 + eps), 1 - eps)
    return lo, hi


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of the proportion ``k / n``."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def images_to_resolve(lost: int, gained: int, n: int, margin_pt: float, confidence: float = 0.95) -> int | None:
    """About how many images, with the same share of lost and gained ones, would settle the margin
    either way; None when the observed drop sits on the margin itself."""
    rate_l, rate_g, margin = lost / n, gained / n, margin_pt / 100
    est = rate_l - rate_g
    if abs(est - margin) < 1e-9:
        return None

    def settles(m: float) -> bool:
        lo, hi = tango_interval(rate_l * m, rate_g * m, m, confidence)
        return hi <= margin if est < margin else lo > margin

    m = float(n)
    while not settles(m):
        m *= 2
        if m > 1e9:
            return None
    lo_m, hi_m = m / 2, m
    while hi_m - lo_m > max(1.0, hi_m * 0.01):
        mid = (lo_m + hi_m) / 2
        lo_m, hi_m = (lo_m, mid) if settles(mid) else (mid, hi_m)
    return int(math.ceil(hi_m))


def _decide(bad: bool, good: bool) -> str:
    return "fail" if bad else "pass" if good else "inconclusive"


def non_inferiority(lost: int, gained: int, n: int, margin_pt: float, confidence: float = 0.95) -> dict:
    """The accuracy-drop rule: ``{drop_pt, interval_pt, verdict, rule, why}``."""
    lo, hi = tango_interval(lost, gained, n, confidence)
    drop, interval = 100 * (lost - gained) / n, [100 * lo, 100 * hi]
    verdict = _decide(interval[0] > margin_pt, interval[1] <= margin_pt)
    shown = f"drop {drop:+.2f} pt [{interval[0]:+.2f}, {interval[1]:+.2f}] ({lost} lost, {gained} gained of {n})"
    if verdict == "inconclusive":
        need = images_to_resolve(lost, gained, n, margin_pt, confidence)
        why = f"inconclusive: {n} test images cannot resolve a {margin_pt:g} pt margin ({shown})" + (
            f"; about {need:,} would" if need else ""
        )
    else:
        op = "<=" if verdict == "pass" else "lies wholly above"
        why = f"{shown}: {'upper end' if verdict == 'pass' else 'interval'} {op} {margin_pt:g} pt"
    return {
        "drop_pt": drop,
        "interval_pt": interval,
        "verdict": verdict,
        "why": why,
        "rule": f"non-inferiority, Tango score interval at {confidence:.0%}, margin {margin_pt:g} pt",
    }


def at_least(k: int, n: int, floor: float, confidence: float = 0.95, what: str = "agreement") -> dict:
    """A proportion that must reach ``floor`` (e.g. top-1 agreement): ``{value, interval, verdict, rule, why}``."""
    lo, hi = wilson_interval(k, n, confidence)
    verdict = _decide(hi < floor, lo >= floor)
    shown = f"{what} {k / n:.4f} [{lo:.4f}, {hi:.4f}] ({k} of {n})"
    if verdict == "inconclusive":
        why = f"inconclusive: {n} test images cannot show {what} >= {floor:g} ({shown})"
    else:
        why = f"{shown}: {'lower end >=' if verdict == 'pass' else 'interval lies wholly below'} {floor:g}"
    return {
        "value": k / n,
        "interval": [lo, hi],
        "verdict": verdict,
        "why": why,
        "rule": f"Wilson score interval at {confidence:.0%}, floor {floor:g}",
    }
