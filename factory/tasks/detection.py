"""Object detection: zero or more boxes of several classes per frame.

The model is anchor-free, CenterNet-style: on a grid of cells (the backbone's features upsampled to
stride 8) it predicts, per class, how likely an object's centre lies in each cell, and per cell the
centre's offset within the cell and the box's width and height as fractions of the frame. Why this
and not SSDLite or a YOLO head: the graph is convolutions, bilinear resizes and one sigmoid with
static shapes, which ONNX Runtime, OpenVINO and LiteRT all convert and quantize alike; anchors, top-k
and NMS stay out of the graph (torchvision's SSDLite carries its post-processing inside, with
data-dependent shapes that int8 converters refuse). Every channel passes through the sigmoid, so the
one output tensor lies in [0, 1] and an int8 output scale resolves boxes to 1/255 of the frame.

Raw output: ``(batch, (classes + 4) * H * W)``, flattened from ``(classes + 4, H, W)``: class
heatmaps, then the x/y offset of the centre within its cell, then width and height fractions. The
card's ``output`` block names ``grid`` and ``classes``. :meth:`Detection.postprocess` decodes (peaks
of the heatmap by a 3x3 maximum, top-k, class-wise NMS) in NumPy: the one implementation runners, the
benchmark, the device agent and the pyfunc share.

Targets: ``(N, M, 5)`` per frame, up to M objects as (class index, x1, y1, x2, y2) in fractions of the
frame; rows of class -1 pad. IoU does not change when the axes are scaled, so fractions suffice.
"""

from __future__ import annotations

import base64

import numpy as np

from ..errors import DataError
from . import register_task
from .base import Quality, Task

__all__ = [
    "Detection",
    "decode",
    "nms",
    "box_iou",
    "match",
    "average_precision",
    "pack_matches",
    "unpack_matches",
    "paired_map_drop",
    "IOU_THRESHOLDS",
]

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)  # COCO's mAP@[.5:.95]
EVAL = {"score_threshold": 0.01, "max_detections": 100}  # how mAP is measured (every plausible detection)
DEPLOY = {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 50}  # what a device reports


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of boxes x1, y1, x2, y2."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by class-wise non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for c in np.unique(classes):
        idx = order[classes[order] == c]
        while len(idx):
            keep.append(int(idx[0]))
            if len(idx) == 1:
                break
            idx = idx[1:][box_iou(boxes[idx[0]], boxes[idx[1:]])[0] <= iou]
    return np.array(sorted(keep, key=lambda i: -scores[i]), np.int64)


def _peaks(heat: np.ndarray) -> np.ndarray:
    """Where a cell is the largest of its 3x3 neighbourhood (per map), as a mask: CenterNet's cheap NMS."""
    padded = np.pad(heat, [(0, 0)] * (heat.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    h, w = heat.shape[-2:]
    best = heat.copy()
    for dy in range(3):
        for dx in range(3):
            best = np.maximum(best, padded[..., dy : dy + h, dx : dx + w])
    return heat >= best


def decode(
    raw: np.ndarray, classes: int, grid: tuple[int, int], score_threshold: float, max_detections: int, iou: float
) -> list[np.ndarray]:
    """Raw outputs of a batch -> per frame an array (K, 6): x1, y1, x2, y2 (fractions), score, class."""
    gh, gw = grid
    maps = np.asarray(raw, np.float32).reshape(len(raw), classes + 4, gh, gw)
    heat = maps[:, :classes]
    keep = _peaks(heat) & (heat >= score_threshold)
    out = []
    for b in range(len(maps)):
        c, y, x = np.nonzero(keep[b])
        scores = heat[b, c, y, x]
        top = np.argsort(-scores, kind="stable")[: 2 * max_detections]  # NMS drops some
        c, y, x, scores = c[top], y[top], x[top], scores[top]
        cx = (x + maps[b, classes, y, x]) / gw
        cy = (y + maps[b, classes + 1, y, x]) / gh
        bw, bh = maps[b, classes + 2, y, x], maps[b, classes + 3, y, x]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clip(0, 1)
        kept = nms(boxes, scores, c, iou)[:max_detections]
        out.append(np.concatenate([boxes[kept], scores[kept, None], c[kept, None].astype(np.float32)], 1))
    return out


def match(dets: list[np.ndarray], targets: np.ndarray, thresholds=IOU_THRESHOLDS) -> dict:
    """Greedy COCO matching per frame and class: each detection, best score first, takes the unmatched
    true box it overlaps most if that IoU reaches the threshold. Returns flat arrays over all
    detections (frame, class, score, true positive per threshold) and true boxes per frame and class."""
    frames, classes, scores, tps = [], [], [], []
    n_cls = int(max([targets[..., 0].max(initial=-1) + 1] + [d[:, 5].max(initial=-1) + 1 for d in dets]))
    gt_count = np.zeros((len(targets), max(n_cls, 1)), np.int64)
    for f, (d, t) in enumerate(zip(dets, targets, strict=True)):
        t = t[t[:, 0] >= 0]
        for c in np.unique(np.concatenate([t[:, 0], d[:, 5]]).astype(int)):
            gt = t[t[:, 0] == c, 1:5]
            gt_count[f, c] = len(gt)
            dc = d[d[:, 5] == c]
            dc = dc[np.argsort(-dc[:, 4], kind="stable")]
            ious = box_iou(dc[:, :4], gt) if len(gt) else np.zeros((len(dc), 0))
            tp = np.zeros((len(dc), len(thresholds)), bool)
            for k, thr in enumerate(thresholds):
                taken = np.zeros(len(gt), bool)
                for i in range(len(dc)):
                    if not len(gt):
                        break
                    cand = np.where(taken, -1.0, ious[i])
                    j = int(cand.argmax())
                    if cand[j] >= thr:
                        taken[j], tp[i, k] = True, True
            frames += [f] * len(dc)
            classes += [c] * len(dc)
            scores += list(dc[:, 4])
            tps.append(tp)
    return {
        "frame": np.array(frames, np.int64),
        "cls": np.array(classes, np.int64),
        "score": np.array(scores, np.float64),
        "tp": np.concatenate(tps) if tps else np.zeros((0, len(thresholds)), bool),
        "gt": gt_count,
    }


def average_precision(m: dict, weights: np.ndarray | None = None, k: slice | int = slice(None)) -> np.ndarray:
    """COCO 101-point AP per IoU threshold (selected by ``k``), averaged over classes that have true
    boxes. ``weights``: how often each frame counts (a bootstrap resample); None = once."""
    w_frame = np.ones(len(m["gt"])) if weights is None else np.asarray(weights, np.float64)
    tp_all = m["tp"][:, [k]] if isinstance(k, int) else m["tp"][:, k]
    recall_points = np.linspace(0, 1, 101)
    aps = []
    for c in range(m["gt"].shape[1]):
        npos = float((m["gt"][:, c] * w_frame).sum())
        if npos <= 0:
            continue
        sel = m["cls"] == c
        order = np.argsort(-m["score"][sel], kind="stable")
        w = w_frame[m["frame"][sel][order]]
        tp = tp_all[sel][order]
        ctp = np.cumsum(tp * w[:, None], 0)
        cfp = np.cumsum(~tp * w[:, None], 0)
        ap = np.zeros(tp.shape[1])
        for j in range(tp.shape[1]):
            if not len(ctp):
                continue
            recall = ctp[:, j] / npos
            precision = ctp[:, j] / np.maximum(ctp[:, j] + cfp[:, j], 1e-12)
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            idx = np.searchsorted(recall, recall_points, side="left")
            ap[j] = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0).mean()
        aps.append(ap)
    return np.mean(aps, 0) if aps else np.zeros(tp_all.shape[1])


TABLE_MIN_SCORE = 0.05  # detections below this are left out of a benchmark report's match table


def pack_matches(m: dict, min_score: float = TABLE_MIN_SCORE) -> dict:
    """A compact, JSON-able form of :func:`match`'s result at IoU 0.5 (detections scoring at least
    ``min_score``): what a benchmark report keeps so the gate can pair two reports frame by frame."""
    keep = m["score"] >= min_score
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()  # noqa: E731
    return {
        "min_score": min_score,
        "frames": int(len(m["gt"])),
        "classes": int(m["gt"].shape[1]),
        "frame": b64(m["frame"][keep].astype(np.uint32)),
        "cls": b64(m["cls"][keep].astype(np.uint16)),
        "score": b64(m["score"][keep].astype(np.float32)),
        "tp50": b64(np.packbits(m["tp"][keep, 0])),
        "n": int(keep.sum()),
        "gt": b64(m["gt"].astype(np.uint16)),
    }


def unpack_matches(t: dict) -> dict:
    """The inverse of :func:`pack_matches` (IoU 0.5 only)."""
    raw = lambda k, dt: np.frombuffer(base64.b64decode(t[k]), dt)  # noqa: E731
    n = int(t["n"])
    return {
        "frame": raw("frame", np.uint32).astype(np.int64),
        "cls": raw("cls", np.uint16).astype(np.int64),
        "score": raw("score", np.float32).astype(np.float64),
        "tp": np.unpackbits(raw("tp50", np.uint8))[:n].astype(bool)[:, None],
        "gt": raw("gt", np.uint16).astype(np.int64).reshape(int(t["frames"]), int(t["classes"])),
    }


def paired_map_drop(cand: dict, base: dict, rounds: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """mAP@0.5 drop (base - candidate, points) of two match results on the same frames, with a paired
    bootstrap interval (frames resampled together for both)."""
    n = len(base["gt"])
    ap_c, ap_b = average_precision(cand, k=0)[0], average_precision(base, k=0)[0]
    rng = np.random.default_rng(seed)
    drops = np.empty(rounds)
    for i in range(rounds):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        drops[i] = 100 * (average_precision(base, w, 0)[0] - average_precision(cand, w, 0)[0])
    lo, hi = np.quantile(drops, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"map50": float(ap_c), "base_map50": float(ap_b), "drop_pt": float(100 * (ap_b - ap_c)),
            "interval_pt": [float(lo), float(hi)]}  # fmt: skip


@register_task
class Detection(Task):
    name = "detection"
    annotation = "boxes"
    primary = "map50"
    quality = Quality("mAP@0.5", "map50", "map50_drop_pt", "map50_drop", "max_map_drop_pt", "mAP@0.5 drop",
                      "drop_interval_pt")  # fmt: skip

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.spec["grid"])

    @property
    def n_classes(self) -> int:
        return int(self.spec["classes"])

    def output(self, classes, grid=None):
        return {
            "name": "detections",
            "shape": ["batch", (len(classes) + 4) * grid[0] * grid[1]],
            "dtype": "float32",
            "activation": "sigmoid; (classes + 4, H, W) flattened: class heatmaps, centre offset x/y in its "
            "cell, box width/height as fractions of the frame",
            "classes": len(classes),
            "grid": list(grid),
            "postprocess": dict(DEPLOY),
        }

    def targets(self, records, classes):
        bad = [r.path for r in records if r.objects is None]
        if bad:
            raise DataError(
                f"{len(bad)} image(s) have no boxes: " + ", ".join(bad[:10]) + ("..." if len(bad) > 10 else ""),
                hint="detection needs objects per frame ([] for a frame without any): `factory data synth --frames`, "
                "`factory data import coco`, or `factory data import cvat --task detection`",
            )
        index = {c: i for i, c in enumerate(classes)}
        most = max([len(r.objects or []) for r in records] + [1])
        out = np.full((len(records), most, 5), -1.0, np.float32)
        for i, r in enumerate(records):
            for j, o in enumerate(r.objects or []):
                x1, y1, x2, y2 = o["box"]
                out[i, j] = (index[o["label"]], x1 / r.width, y1 / r.height, x2 / r.width, y2 / r.height)
        return out

    def postprocess(self, raw, **overrides):
        """``{"detections"}``: per frame (K, 6) x1, y1, x2, y2 (fractions of the frame), score, class index,
        with the card's deployment thresholds (or ``overrides``)."""
        cfg = DEPLOY | self.spec.get("postprocess", {}) | overrides
        dets = decode(
            raw, self.n_classes, self.grid, cfg["score_threshold"], cfg["max_detections"], cfg["iou_threshold"]
        )
        return {"detections": dets}

    def match_table(self, raw, targets) -> dict:
        """:func:`pack_matches` of these outputs against the targets (what a benchmark report keeps)."""
        return pack_matches(match(self._eval_dets(raw), targets))

    def _eval_dets(self, raw) -> list[np.ndarray]:
        iou = (DEPLOY | self.spec.get("postprocess", {}))["iou_threshold"]
        return decode(raw, self.n_classes, self.grid, EVAL["score_threshold"], EVAL["max_detections"], iou)

    def metrics(self, raw, targets):
        m = match(self._eval_dets(raw), targets)
        ap = average_precision(m)
        deployed = self.postprocess(raw)["detections"]
        return {
            "map50": round(float(ap[0]), 6),
            "map": round(float(ap.mean()), 6),
            "map75": round(float(ap[5]), 6),
            "objects": int(m["gt"].sum()),
            "objects_per_frame": round(float(np.mean([len(d) for d in deployed])), 4),
            "n": int(len(targets)),
        }

    def parity(self, candidate, reference, targets, rounds: int = 1000, seed: int = 0):
        """The candidate's mAP@0.5 against the canonical model's on the same frames: the drop in points with
        a paired bootstrap interval (frames resampled together for both), mAP@[.5:.95] beside it."""
        mc, mr = match(self._eval_dets(candidate), targets), match(self._eval_dets(reference), targets)
        ap_c, ap_r = average_precision(mc), average_precision(mr)
        n = len(targets)
        lo, hi = paired_map_drop(mc, mr, rounds, seed=seed)["interval_pt"]
        return {
            "n": int(n),
            "map50": round(float(ap_c[0]), 6),
            "canonical_map50": round(float(ap_r[0]), 6),
            "map50_drop_pt": round(float(100 * (ap_r[0] - ap_c[0])), 4),
            "drop_interval_pt": [round(float(lo), 4), round(float(hi), 4)],
            "map": round(float(ap_c.mean()), 6),
            "canonical_map": round(float(ap_r.mean()), 6),
            "max_abs_diff": float(np.abs(np.asarray(candidate, np.float64) - reference).max()),
        }

    def _outcome(self, d: np.ndarray) -> dict:
        areas = ((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])).tolist()
        best = int(d[:, 4].argmax()) if len(d) else None
        return {"confidence": float(d[best, 4]) if best is not None else 0.0,
                "cls": int(d[best, 5]) if best is not None else self.n_classes,
                "objects": len(d), "box_areas": areas}  # fmt: skip

    def outcomes(self, raw):
        """Per frame: the best detection's score and class (the extra last class: no object at all), how
        many objects, and each one's box area as a fraction of the frame."""
        return [self._outcome(d) for d in self.postprocess(raw)["detections"]]

    def device_output(self, raw, frame, labels):
        """A list of ``{"label", "score", "box": [x1, y1, x2, y2] in the frame's pixels}``, best first."""
        d = self.postprocess(raw[:1])["detections"][0]
        h, w = frame.shape[:2]
        result = [
            {"label": labels[int(row[5])], "score": float(row[4]),
             "box": [float(v) for v in row[:4] * np.float32([w, h, w, h])]}
            for row in d
        ]  # fmt: skip
        return result, self._outcome(d)

    def records(self, raw, labels):
        return [
            [{"label": labels[int(r[5])], "score": float(r[4]), "box": [float(v) for v in r[:4]]} for r in d]
            for d in self.postprocess(raw)["detections"]
        ]

    def telemetry_classes(self, labels):
        return [*labels, "(no object)"]

    def summary(self, metrics):
        return f"mAP@0.5 {metrics['map50']:.4f}, mAP@[.5:.95] {metrics['map']:.4f}"

    # -- training (torch imported lazily: the device side never gets here) --

    def points(self, target):
        """The four corners of every box, in order (padding rows have none)."""
        real = target[target[:, 0] >= 0]
        x1, y1, x2, y2 = real[:, 1], real[:, 2], real[:, 3], real[:, 4]
        return np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x2, y2], 1), np.stack([x1, y2], 1)],
                        1).reshape(-1, 2)  # fmt: skip

    def moved(self, target, points):
        """Each box becomes the bounds of its moved corners, cut to the frame; a box that left the frame
        (less than 40% of it still inside, or under a pixel) becomes padding."""
        out = np.full_like(target, -1.0)
        real = target[target[:, 0] >= 0]
        k = 0
        for row, quad in zip(real, points.reshape(-1, 4, 2), strict=True):
            x1, y1 = quad.min(0)
            x2, y2 = quad.max(0)
            cx1, cy1, cx2, cy2 = np.clip([x1, y1, x2, y2], 0, 1)
            area, inside = (x2 - x1) * (y2 - y1), max(cx2 - cx1, 0) * max(cy2 - cy1, 0)
            if area > 0 and inside / area >= 0.4 and cx2 - cx1 > 1e-3 and cy2 - cy1 > 1e-3:
                out[k] = (row[0], cx1, cy1, cx2, cy2)
                k += 1
        return out

    def train_target(self, target):
        heat, reg = self.encode(target)
        return np.concatenate([heat, reg])

    def head(self, channels: int, fh: int, fw: int):
        """Upsample the backbone's (channels, fh, fw) features 4x (stride 8), then one map per class and 4
        box maps, all through a sigmoid, flattened."""
        from ._torch_heads import DetectionHead

        return DetectionHead(channels, self.n_classes)

    def encode(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training targets of one frame's boxes (M, 5): the heatmaps (a Gaussian around each centre, 1 at
        its cell) and per cell [mask, offset x, offset y, width, height]."""
        gh, gw = self.grid
        heat = np.zeros((self.n_classes, gh, gw), np.float32)
        reg = np.zeros((5, gh, gw), np.float32)
        ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
        for c, x1, y1, x2, y2 in boxes[boxes[:, 0] >= 0]:
            cx, cy, bw, bh = (x1 + x2) / 2 * gw, (y1 + y2) / 2 * gh, (x2 - x1), (y2 - y1)
            ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
            sx, sy = max(bw * gw / 6, 0.5), max(bh * gh / 6, 0.5)
            g = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
            heat[int(c)] = np.maximum(heat[int(c)], g)
            reg[:, iy, ix] = (1.0, cx - ix, cy - iy, bw, bh)
        return heat, reg

    def loss(self):
        """CenterNet's penalty-reduced focal loss on the heatmaps plus L1 on offsets and sizes at centres."""
        import torch

        n, (gh, gw) = self.n_classes, self.grid

        def fn(out, target):
            heat_t, reg_t = target[:, :n], target[:, n:]
            out = out.view(len(out), n + 4, gh, gw)
            p = out[:, :n].clamp(1e-4, 1 - 1e-4)
            pos = heat_t.eq(1).float()
            npos = pos.sum().clamp(min=1)
            focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - heat_t) ** 4 * p**2 * torch.log(1 - p))
            mask = reg_t[:, :1]
            offset = (mask * (out[:, n : n + 2] - reg_t[:, 1:3]).abs()).sum()
            size = (mask * (out[:, n + 2 :] - reg_t[:, 3:5]).abs()).sum()
            return focal.sum() / npos + (offset + 5 * size) / npos

        return fn

    def distill_loss(self):
        """Against a teacher's raw output: the quality focal loss (GFL) of the heatmaps towards the teacher's
        scores, and L1 of offsets and sizes weighted by the teacher's score at each cell, both normalised by
        the cells where the teacher sees an object, as :meth:`loss` is by the true centres."""
        import torch.nn.functional as F

        n, (gh, gw) = self.n_classes, self.grid

        def fn(out, teacher):
            s, t = out.view(len(out), n + 4, gh, gw), teacher.view(len(teacher), n + 4, gh, gw)
            p, q = s[:, :n].clamp(1e-4, 1 - 1e-4), t[:, :n]
            heat = ((q - p).abs() ** 2 * F.binary_cross_entropy(p, q, reduction="none")).sum()
            weight = q.amax(1, keepdim=True)
            npos = (weight > 0.5).float().sum().clamp(min=1)
            box = (weight * (s[:, n:] - t[:, n:]).abs()).sum()
            return heat / npos + 5 * box / npos

        return fn
