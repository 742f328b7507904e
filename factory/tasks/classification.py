"""Classification: one label per image; the model returns logits; top-1 is what budgets judge."""

from __future__ import annotations

import numpy as np

from . import register_task
from .base import Quality, Task

__all__ = ["Classification", "parity_metrics", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def parity_metrics(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1, drop and agreement against the canonical model, plus numeric closeness of the outputs."""
    cand_pred, ref_pred = candidate.argmax(1), reference.argmax(1)
    diff = candidate.astype(np.float64) - reference.astype(np.float64)
    cos = (candidate * reference).sum(1) / (
        np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
    )
    noise = float((diff**2).sum())
    cand_ok, ref_ok = cand_pred == labels, ref_pred == labels
    top1, ref_top1 = float(cand_ok.mean()), float(ref_ok.mean())
    return {
        "n": int(len(labels)),
        "lost": int((ref_ok & ~cand_ok).sum()),  # images the canonical model gets right and the artifact wrong
        "gained": int((~ref_ok & cand_ok).sum()),
        "top1": round(top1, 6),
        "canonical_top1": round(ref_top1, 6),
        "accuracy_drop_pt": round(100 * (ref_top1 - top1), 4),
        "top1_agreement": round(float((cand_pred == ref_pred).mean()), 6),
        "disagreements": int((cand_pred != ref_pred).sum()),
        "max_abs_diff": float(np.abs(diff).max()),
        "mean_abs_diff": float(np.abs(diff).mean()),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "snr_db": round(10 * np.log10(float((reference.astype(np.float64) ** 2).sum()) / noise), 2)
        if noise > 0
        else None,
    }


@register_task
class Classification(Task):
    name = "classification"
    annotation = "label"
    primary = "top1"
    quality = Quality("top-1", "top1", "accuracy_drop_pt", "accuracy_drop", "max_accuracy_drop_pt", "drop")

    def output(self, classes, **geometry):
        return {
            "name": "logits",
            "shape": ["batch", len(classes)],
            "dtype": "float32",
            "activation": "none (apply softmax)",
        }

    def targets(self, records, classes):
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[r.label] for r in records], np.int64)

    def postprocess(self, raw):
        """``{"probs", "label"}``: softmax probabilities and the top-1 class index per image."""
        probs = softmax(raw)
        return {"probs": probs, "label": probs.argmax(1)}

    def metrics(self, raw, targets):
        return {"top1": round(float((np.asarray(raw).argmax(1) == targets).mean()), 6), "n": int(len(targets))}

    def parity(self, candidate, reference, targets):
        return parity_metrics(candidate, reference, targets)

    def summary(self, metrics):
        return f"top-1 {metrics['top1']:.4f}"

    def device_output(self, raw, frame, labels):
        """(label, its probability)."""
        p = softmax(np.asarray(raw, np.float64))[0]
        i = int(p.argmax())
        return (labels[i], float(p[i])), {"confidence": float(p[i]), "cls": i}

    def records(self, raw, labels):
        probs = softmax(np.asarray(raw, np.float64))
        return [{"label": labels[int(p.argmax())], "confidence": float(p.max())} for p in probs]

    def outcomes(self, raw):
        probs = softmax(np.asarray(raw, np.float64))
        return [{"confidence": float(p.max()), "cls": int(p.argmax())} for p in probs]
