"""Classification metrics, the confusion-matrix picture and the reference profile for drift.

Everything here takes NumPy logits, so exported artifacts (ONNX Runtime, OpenVINO, LiteRT) are
scored by the very same code as the PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..stats import BRIGHTNESS_EDGES, CONFIDENCE_EDGES, CONTRAST_EDGES, histogram
from ..tasks.classification import softmax

__all__ = ["softmax", "classification_metrics", "confusion_matrix", "plot_confusion", "reference_profile"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``n`` x ``n`` counts, rows true class, columns predicted."""
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(y_true: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict:
    """Top-1, per-class precision/recall and the confusion matrix."""
    y_true = np.asarray(y_true)
    y_pred = logits.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    per_class = {}
    for i, c in enumerate(classes):
        tp, predicted, actual = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        per_class[c] = {
            "precision": round(float(tp / predicted), 6) if predicted else None,
            "recall": round(float(tp / actual), 6) if actual else None,
            "support": int(actual),
        }
    return {
        "n": int(len(y_true)),
        "top1": round(float((y_pred == y_true).mean()), 6) if len(y_true) else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion(cm: list[list[int]], classes: list[str], path: str | Path, title: str) -> None:
    """The confusion matrix as a PNG."""
    from .._deps import pyplot

    plt = pyplot()

    m = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 0.6 + 0.7 * len(classes)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black",
                    fontsize=8,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reference_profile(logits: np.ndarray, classes: list[str], stats: list[tuple[float, float]], split: str) -> dict:
    """What the model sees and says on held-out data: the baseline that device telemetry is compared to."""
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    counts = np.bincount(pred, minlength=len(classes))
    return {
        "split": split,
        "n": int(len(pred)),
        "predicted_class": {"classes": classes, "counts": counts.astype(int).tolist()},
        "confidence": {"edges": CONFIDENCE_EDGES, "counts": histogram(conf, CONFIDENCE_EDGES)},
        "brightness": {"edges": BRIGHTNESS_EDGES, "counts": histogram([s[0] for s in stats], BRIGHTNESS_EDGES)},
        "contrast": {"edges": CONTRAST_EDGES, "counts": histogram([s[1] for s in stats], CONTRAST_EDGES)},
    }
