"""Parity of an artifact against the canonical model: every figure first, the verdict after."""

from __future__ import annotations

import numpy as np

__all__ = ["parity_metrics", "budget_checks"]


def parity_metrics(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    cand_pred, ref_pred = candidate.argmax(1), reference.argmax(1)
    diff = candidate.astype(np.float64) - reference.astype(np.float64)
    cos = (candidate * reference).sum(1) / (np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
    noise = float((diff**2).sum())
    top1, ref_top1 = float((cand_pred == labels).mean()), float((ref_pred == labels).mean())
    return {
        "n": int(len(labels)),
        "top1": round(top1, 6),
        "canonical_top1": round(ref_top1, 6),
        "accuracy_drop_pt": round(100 * (ref_top1 - top1), 4),
        "top1_agreement": round(float((cand_pred == ref_pred).mean()), 6),
        "disagreements": int((cand_pred != ref_pred).sum()),
        "max_abs_diff": float(np.abs(diff).max()),
        "mean_abs_diff": float(np.abs(diff).mean()),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "snr_db": round(10 * np.log10(float((reference.astype(np.float64) ** 2).sum()) / noise), 2) if noise > 0 else None,
    }


def _check(name: str, value, limit, ok: bool, unit: str = "") -> dict:
    op = "<=" if name.startswith("max") or name in ("accuracy_drop", "latency_p95", "size") else ">="
    return {"check": name, "value": value, "limit": limit, "passed": ok,
            "why": f"{value}{unit} {op} {limit}{unit}" if ok else f"{value}{unit} violates {op} {limit}{unit}"}


def budget_checks(parity: dict, budgets: dict, *, tolerance: float | None, latency_p95: float | None, size_mb: float) -> list[dict]:
    """Every check the profile asks for, each with its measured value, limit and verdict."""
    checks = [
        _check("accuracy_drop", parity["accuracy_drop_pt"], budgets["max_accuracy_drop_pt"],
               parity["accuracy_drop_pt"] <= budgets["max_accuracy_drop_pt"], " pt"),
        _check("top1_agreement", parity["top1_agreement"], budgets["min_top1_agreement"],
               parity["top1_agreement"] >= budgets["min_top1_agreement"]),
    ]
    if tolerance is not None:
        checks.append(_check("max_abs_diff", round(parity["max_abs_diff"], 8), tolerance, parity["max_abs_diff"] <= tolerance))
    if budgets["max_latency_ms"] is not None and latency_p95 is not None:
        checks.append(_check("latency_p95", round(latency_p95, 3), budgets["max_latency_ms"], latency_p95 <= budgets["max_latency_ms"], " ms"))
    if budgets["max_size_mb"] is not None:
        checks.append(_check("size", round(size_mb, 3), budgets["max_size_mb"], size_mb <= budgets["max_size_mb"], " MB"))
    return checks
