"""The statistics behind the health rules: each rule fails a window only when the window's own sample
says so with confidence, so a small window cannot fail a healthy release by chance.

- A share (errors per inference; inferences slower than the latency limit) fails when its one-sided
  lower confidence bound is above the limit: a Wilson score bound on an effective sample size that
  treats the device, not the inference, as the unit (when devices differ more than independent
  inferences would, the sample is discounted by the dispersion between devices: ten failing
  inferences on one device weigh less than one on each of ten devices).
- A histogram (confidence, brightness, contrast, predicted classes) drifts when its effect size is
  above the limit (PSI or JS) *and* a chi-square test of the two histograms (the reference profile
  and the window) rejects "same distribution" at the rule's ``alpha``. PSI alone is noise at small
  windows: its chance level is about (K-1)(1/n + 1/N) for K buckets, 0.28 for 16 buckets at n=60.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["z_of", "chi2_critical", "share_test", "histogram_test", "smoothed_psi", "share_above", "log_mean"]


def z_of(alpha: float) -> float:
    """One-sided standard normal quantile: P(Z > z) = alpha."""
    return NormalDist().inv_cdf(1.0 - alpha)


def chi2_critical(df: int, alpha: float) -> float:
    """Upper ``alpha`` quantile of chi-square with ``df`` degrees of freedom (Wilson-Hilferty; within
    about 3% of the exact value for df >= 1 at alpha 0.001, on the conservative side for small df)."""
    k = 2.0 / (9.0 * df)
    return df * (1.0 - k + z_of(alpha) * math.sqrt(k)) ** 3


def share_test(k: np.ndarray, n: np.ndarray, limit: float, alpha: float) -> dict:
    """Is the share sum(k)/sum(n) above ``limit``? ``k``, ``n``: per device (hits, trials).

    Returns the share, its lower bound at confidence 1-alpha, the effective sample size and
    ``exceeds`` (lower bound > limit).
    """
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    k, n = k[n > 0], n[n > 0]
    total = float(n.sum())
    if total <= 0:
        return {"share": None, "lower": None, "n_eff": 0.0, "exceeds": False}
    p = float(k.sum()) / total
    n_eff = total
    m = len(n)
    if m >= 2 and 0.0 < p < 1.0:
        # devices as clusters: Pearson's dispersion statistic over devices; when it shows more spread
        # between devices than independent inferences would give (at 5%), the sample counts as
        # total / dispersion independent observations (quasi-binomial)
        pearson = float(np.sum((k - p * n) ** 2 / (n * p * (1 - p))))
        if pearson > chi2_critical(m - 1, 0.05):
            n_eff = total / (pearson / (m - 1))
    z = z_of(alpha)
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    lower = max(0.0, centre - half)
    return {"share": p, "lower": lower, "n_eff": n_eff, "exceeds": lower > limit}


def _aligned(reference, observed) -> tuple[np.ndarray, np.ndarray]:
    r, o = np.asarray(reference, np.float64), np.asarray(observed, np.float64)
    n = max(len(r), len(o))
    r, o = np.pad(r, (0, n - len(r))), np.pad(o, (0, n - len(o)))
    keep = (r + o) > 0  # buckets empty in both carry no information
    return r[keep], o[keep]


def smoothed_psi(reference, observed) -> float | None:
    """PSI with half a count added to every bucket either side uses (Jeffreys): one inference in a
    bucket the reference never filled costs a little, not ln(1/1e-4)."""
    r, o = _aligned(reference, observed)
    if r.sum() <= 0 or o.sum() <= 0:
        return None
    pr = (r + 0.5) / (r.sum() + 0.5 * len(r))
    po = (o + 0.5) / (o.sum() + 0.5 * len(o))
    return float(np.sum((po - pr) * np.log(po / pr)))


def _pooled(r: np.ndarray, o: np.ndarray, min_expected: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent buckets merged until each expects at least ``min_expected`` counts in the smaller row
    (Cochran's rule: the chi-square approximation fails on sparse buckets, e.g. a tail bucket the
    reference filled once)."""
    need = min_expected * (r.sum() + o.sum()) / min(r.sum(), o.sum())
    rs, os_, acc_r, acc_o = [], [], 0.0, 0.0
    for a, b in zip(r, o, strict=True):
        acc_r, acc_o = acc_r + a, acc_o + b
        if acc_r + acc_o >= need:
            rs.append(acc_r)
            os_.append(acc_o)
            acc_r = acc_o = 0.0
    if acc_r + acc_o > 0:
        if rs:
            rs[-1] += acc_r
            os_[-1] += acc_o
        else:
            rs.append(acc_r)
            os_.append(acc_o)
    return np.asarray(rs), np.asarray(os_)


def histogram_test(reference, observed, alpha: float) -> dict:
    """Pearson's chi-square test of homogeneity of two count histograms (sparse adjacent buckets
    pooled first): statistic, df, critical value at ``alpha`` and ``significant``."""
    r, o = _aligned(reference, observed)
    if r.sum() <= 0 or o.sum() <= 0:
        return {"chi2": 0.0, "df": 0, "critical": None, "significant": False}
    r, o = _pooled(r, o)
    if len(r) < 2:
        return {"chi2": 0.0, "df": 0, "critical": None, "significant": False}
    table = np.stack([r, o])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    df = len(r) - 1
    crit = chi2_critical(df, alpha)
    return {"chi2": stat, "df": df, "critical": crit, "significant": stat > crit}


def share_above(counts, edges, threshold: float) -> float:
    """How many of a histogram's values lie above ``threshold`` (uniform within the bucket it cuts)."""
    counts, edges = np.asarray(counts, np.float64), np.asarray(edges, np.float64)
    lo, hi = edges[:-1], edges[1:]
    frac = np.clip((hi - threshold) / (hi - lo), 0.0, 1.0)
    return float(np.sum(counts * frac))


def log_mean(hists: list, edges) -> dict:
    """Mean log latency of devices' latency histograms (bucket centres on the log scale) and its
    standard error with the device as the unit (the spread between devices' means when it is larger
    than independent inferences would give, at 5%)."""
    e = np.log(np.asarray(edges, np.float64))
    centre = (e[:-1] + e[1:]) / 2
    h = np.asarray(hists, np.float64).reshape(len(hists), -1)
    n = h.sum(axis=1)
    h, n = h[n > 0], n[n > 0]
    total = float(n.sum())
    if total < 2:
        return {"mean": None, "se": None, "n": total}
    s = h @ centre
    mu = float(s.sum()) / total
    within = float(np.sum(h * (centre - mu) ** 2)) / (total - 1)
    se2 = within / total
    m = len(n)
    if m >= 2 and within > 0:
        between = float(np.sum((s / n - mu) ** 2 * n)) / (m - 1)  # between-device mean square
        if between / within > chi2_critical(m - 1, 0.05) / (m - 1):
            se2 = max(se2, m / (m - 1) * float(np.sum((s - mu * n) ** 2)) / total**2)
    return {"mean": mu, "se": math.sqrt(se2), "n": total}
