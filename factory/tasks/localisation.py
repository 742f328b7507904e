"""Document localisation: one document's four corners per frame (MIDV-500's ground truth), and the
rectified crop a classification bundle can take next.

Raw output: 8 numbers per image, the corners TL, TR, BR, BL as (x, y) fractions of the frame's width and
height (so they survive the preprocessing's stretch resize; no activation: a corner may lie a little
outside the frame). Targets carry the frame's size in pixels too (columns 8 and 9), because corner
error is measured in pixels: the mean distance of the four corners from the true ones, in % of the
true quad's diagonal. Quad IoU is reported beside it.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import DataError
from . import register_task
from .base import Quality, Task, paired_bootstrap

__all__ = ["DocumentLocalisation", "corner_errors", "quad_ious", "rectify", "CORNERS"]

CORNERS = ("top-left", "top-right", "bottom-right", "bottom-left")
WITHIN_PCT = 2.0  # the share of frames whose corner error is within this % of the diagonal is reported


def _pixels(norm: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N, 8) fractions -> (N, 4, 2) pixels, given (N, 2) frame sizes (width, height)."""
    return np.asarray(norm, np.float64).reshape(-1, 4, 2) * np.asarray(sizes, np.float64)[:, None, :]


def _diagonal(quads: np.ndarray) -> np.ndarray:
    return 0.5 * (np.linalg.norm(quads[:, 2] - quads[:, 0], axis=1) + np.linalg.norm(quads[:, 3] - quads[:, 1], axis=1))


def corner_errors(raw: np.ndarray, targets: np.ndarray, against: np.ndarray | None = None) -> np.ndarray:
    """Per-frame mean corner distance from the true corners (or from ``against``'s, e.g. the canonical
    model's), in % of the true quad's diagonal."""
    truth = _pixels(targets[:, :8], targets[:, 8:10])
    other = truth if against is None else _pixels(against[:, :8], targets[:, 8:10])
    pred = _pixels(raw[:, :8], targets[:, 8:10])
    return 100.0 * np.linalg.norm(pred - other, axis=2).mean(1) / np.maximum(_diagonal(truth), 1e-9)


def quad_ious(raw: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-frame IoU of the predicted and true quads (a self-crossing prediction counts by its hull)."""
    truth, pred = _pixels(targets[:, :8], targets[:, 8:10]), _pixels(raw[:, :8], targets[:, 8:10])
    out = np.zeros(len(truth))
    for i, (a, b) in enumerate(zip(pred.astype(np.float32), truth.astype(np.float32), strict=True)):
        a, b = cv2.convexHull(a), cv2.convexHull(b)
        inter, _ = cv2.intersectConvexConvex(a, b)
        union = cv2.contourArea(a) + cv2.contourArea(b) - inter
        out[i] = inter / union if union > 0 else 0.0
    return out


def rectify(frame: np.ndarray, corners: np.ndarray, size: tuple[int, int] = (428, 270)) -> np.ndarray:
    """The document cut out of a BGR frame and warped flat to ``size`` (width, height; ID-1 card
    proportions by default): what a classification bundle takes next. ``corners``: 8 fractions."""
    h, w = frame.shape[:2]
    src = (np.asarray(corners, np.float32).reshape(4, 2) * np.float32([w, h])).astype(np.float32)
    dst = np.float32([[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]])
    return cv2.warpPerspective(frame, cv2.getPerspectiveTransform(src, dst), size, flags=cv2.INTER_LINEAR)


@register_task
class DocumentLocalisation(Task):
    name = "document-localisation"
    annotation = "quad"
    primary = "corner_error_pct"
    higher_is_better = False
    quality = Quality("corner error %", "corner_error_pct", "corner_error_increase_pct", "corner_error_increase",
                      "max_corner_error_increase_pct", "corner-error increase", "increase_interval_pct",
                      " pt of the diagonal")  # fmt: skip

    def output(self, classes, **geometry):
        return {
            "name": "corners",
            "shape": ["batch", 8],
            "dtype": "float32",
            "activation": "none: x, y of TL, TR, BR, BL as fractions of the frame's width and height",
        }

    def targets(self, records, classes):
        """(N, 10): the true corners as fractions (8) and the frame's width and height in pixels."""
        bad = [
            f"{r.path}: {'no quad' if r.quad is None else f'{len(r.quad)} points, not 4'}"
            for r in records
            if r.quad is None or len(r.quad) != 4
        ]
        if bad:
            raise DataError(
                f"{len(bad)} image(s) have no document quad: " + "; ".join(bad[:20]) + ("..." if len(bad) > 20 else ""),
                hint="document localisation needs four corners per image (CVAT polygons of 4 points, MIDV-500 quads)",
            )
        out = np.zeros((len(records), 10), np.float32)
        for i, r in enumerate(records):
            q = np.asarray(r.quad, np.float32)
            out[i, :8] = (q / np.float32([r.width, r.height])).reshape(-1)
            out[i, 8:] = (r.width, r.height)
        return out

    def head(self, channels: int, fh: int, fw: int):
        """The head on a backbone's (channels, fh, fw) feature map: upsampled 4x to four corner heatmaps,
        each turned into a point by a spatial softmax and its expected position (soft-argmax, DSNT-style).
        Learning where a corner is on a map is far easier than regressing 8 numbers from pooled features
        (measured: direct regression had 6% corner error after 10 epochs). Bilinear resizes, convolutions,
        a softmax and a matrix product: static shapes that every runtime exports."""
        from ._torch_heads import localisation_head

        return localisation_head(channels, fh, fw)

    def loss(self):
        """Smooth L1 on the corner fractions (quadratic within 1% of the frame, linear beyond)."""
        import torch

        return torch.nn.SmoothL1Loss(beta=0.01)

    def postprocess(self, raw):
        """``{"corners"}``: (N, 4, 2) fractions of the frame, TL, TR, BR, BL (crop with :func:`rectify`)."""
        return {"corners": np.asarray(raw, np.float32)[:, :8].reshape(-1, 4, 2)}

    def metrics(self, raw, targets):
        err, iou = corner_errors(raw, targets), quad_ious(raw, targets)
        return {
            "corner_error_pct": round(float(err.mean()), 4),
            "corner_error_p95_pct": round(float(np.percentile(err, 95)), 4),
            f"within_{WITHIN_PCT:g}pct": round(float((err <= WITHIN_PCT).mean()), 6),
            "quad_iou": round(float(iou.mean()), 6),
            "n": int(len(targets)),
        }

    def summary(self, metrics):
        return f"corner error {metrics['corner_error_pct']:.2f}% of the diagonal, quad IoU {metrics['quad_iou']:.4f}"

    def outcomes(self, raw):
        """One document per frame, always found (the model has no score): counted as one object whose area
        is the predicted quad's share of the frame, so a camera that moved away shows as drift."""
        quads = np.asarray(raw, np.float64)[:, :8].reshape(-1, 4, 2)
        x, y = quads[..., 0], quads[..., 1]
        areas = 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))  # shoelace, in frame fractions
        return [{"confidence": 1.0, "cls": 0, "objects": 1, "box_areas": [float(min(a, 1.0))]} for a in areas]

    def telemetry_classes(self, labels):
        return ["document"]

    def records(self, raw, labels):
        return [{"corners": c.tolist()} for c in self.postprocess(raw)["corners"]]

    def device_output(self, raw, frame, labels):
        """``{"corners": (4, 2) pixels TL, TR, BR, BL, "crop": the document warped flat}``: the crop is what a
        classification bundle takes next (localise -> rectify -> classify)."""
        corners = np.asarray(raw, np.float32)[0, :8]
        h, w = frame.shape[:2]
        result = {"corners": corners.reshape(4, 2) * np.float32([w, h]), "crop": rectify(frame, corners)}
        return result, self.outcomes(raw[:1])[0]

    def points(self, target):
        return target[:8].reshape(4, 2)

    def moved(self, target, points):
        out = target.copy()
        out[:8] = points.reshape(-1)
        return out

    def train_target(self, target):
        return np.ascontiguousarray(target[:8], np.float32)

    def match_table(self, raw, targets) -> dict:
        """Each frame's corner error (% of the diagonal): what a benchmark report keeps, so the gate can pair
        two reports frame by frame."""
        err = corner_errors(raw, targets)
        return {"frames": int(len(err)), "corner_error_pct": [round(float(e), 4) for e in err]}

    def parity(self, candidate, reference, targets):
        """The candidate's corner error against the canonical model's on the same frames: the mean
        increase with a paired bootstrap interval, and how far its corners are from the canonical ones."""
        cand, ref = corner_errors(candidate, targets), corner_errors(reference, targets)
        lo, hi = paired_bootstrap(cand, ref)
        apart = corner_errors(candidate, targets, against=reference)
        return {
            "n": int(len(targets)),
            "corner_error_pct": round(float(cand.mean()), 4),
            "canonical_corner_error_pct": round(float(ref.mean()), 4),
            "corner_error_increase_pct": round(float(cand.mean() - ref.mean()), 4),
            "increase_interval_pct": [round(lo, 4), round(hi, 4)],
            "quad_iou": round(float(quad_ious(candidate, targets).mean()), 6),
            "corners_from_canonical_pct": round(float(apart.mean()), 4),  # in % of the diagonal
            "max_abs_diff": float(np.abs(np.asarray(candidate, np.float64) - reference).max()),
        }
