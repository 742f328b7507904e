"""Training for the tasks whose output says where things are (document localisation, detection): a
classifier's backbone, the task's head and loss, and a loop that keeps the epoch with the best validation
value of the task's primary metric. Geometric augmentation moves the task's points (corners, box corners)
with the image. Ends in the same canonical model directory (weights, ONNX, card with ``task``) as
classification.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from .. import progress
from .._io import atomic_dir, write_json
from ..data.manifest import load_manifest
from ..errors import DataError, ModelError
from ..preprocess import input_spec, make_spec, preprocess
from ..stats import image_stats
from ..tasks import Task
from .canonical import CARD_NAME, CARD_SCHEMA, WEIGHTS_NAME, CanonicalModel, count_macs
from .data import ImageDataset, augment
from .distributed import SINGLE, Ranks, epoch_batches
from .loop import (
    _log_onnx_model,
    _lr_at,
    _make_optimizer,
    _make_threads,
    _onnx_checked,
    _training_facts,
    card_files,
    card_lineage,
    predict_logits,
    tracked_run,
)

__all__ = ["task_module", "fit_spatial", "train_spatial"]


def _backbone(base):
    """The feature extractor of a torchvision-style classifier: its ``features``, or its children up to the
    global pooling (ResNet, RegNet, tiny-cnn)."""
    from torch import nn

    if hasattr(base, "features"):
        return base.features
    children = list(base.children())
    cut = next((i for i, c in enumerate(children) if isinstance(c, nn.AdaptiveAvgPool2d)), None)
    if not cut:
        raise ModelError(
            f"{type(base).__name__} has no feature extractor this task can take (no .features, no global pooling)",
            hint="use a MobileNet, EfficientNet, ResNet, RegNet or tiny-cnn backbone",
        )
    return nn.Sequential(*children[:cut])


def task_module(architecture: str, task: Task, image_size: tuple[int, int], pretrained=None):
    """Backbone of ``architecture`` plus the task's head, sized for ``image_size`` (static shapes). A task
    whose output is a grid (detection) learns the grid here: ``task.spec["grid"]``."""
    import torch
    from torch import nn

    from .models import create_model

    backbone = _backbone(create_model(architecture, 8, pretrained))
    with torch.no_grad():
        c, fh, fw = backbone.eval()(torch.zeros(1, 3, *image_size)).shape[1:]
    task.spec.setdefault("grid", [task.upsample * int(fh), task.upsample * int(fw)])
    return nn.Sequential(backbone, task.head(int(c), int(fh), int(fw)))


class _SpatialDataset(ImageDataset):
    """(image tensor, the task's training target); augmentation warps the image and moves the target's
    points (in pixels) with it."""

    def __init__(self, images, labels, spec, *, task: Task, augment_cfg=None, seed: int = 0):
        super().__init__(images, labels, spec, augment_cfg=augment_cfg, seed=seed)
        self.task = task

    def __getitem__(self, i: int):
        import torch

        img, target = self.images[i], self.labels[i].copy()
        if self.augment_cfg is not None:
            h, w = img.shape[:2]
            pts = self.task.points(target) * np.float32([w, h])
            img, pts = augment(img, np.random.default_rng([self.seed, self.epoch, i]), self.augment_cfg, points=pts)
            target = self.task.moved(target, (pts / np.float32([w, h])).astype(np.float32))
        return torch.from_numpy(preprocess(img, self.spec)[0]), torch.from_numpy(self.task.train_target(target))


def _distilled(task: Task, teacher, weight: float):
    """The task's loss mixed with its distillation loss against ``teacher``'s output on the same batch."""
    import torch

    loss_fn, distill_fn = task.loss(), task.distill_loss()
    teacher.eval()

    def fn(out, y, x):
        with torch.no_grad():
            soft = teacher(x)
        return (1 - weight) * loss_fn(out, y) + weight * distill_fn(out, soft)

    return fn


def fit_spatial(model, task: Task, train_ds, val_images, val_targets, spec, cfg, log_metrics,
                ranks: Ranks = SINGLE, *, teacher=None, distill_weight: float = 0.5) -> dict | None:  # fmt: skip
    """Train with the configured schedule; keep the epoch with the best validation primary metric (on
    several workers: as :func:`.loop.fit` does). With a ``teacher`` (the canonical model while a pruned copy
    is fine-tuned) the loss mixes the task's loss with :meth:`Task.distill_loss` towards the teacher's heads."""
    import torch
    from torch.utils.data import DataLoader

    t = cfg["train"]
    torch.manual_seed(t["seed"])
    opt = _make_optimizer(model, t)
    if teacher is None:
        task_loss = task.loss()

        def loss_fn(out, y, x):
            return task_loss(out, y)
    else:
        loss_fn = _distilled(task, teacher, distill_weight)
    sign = -1.0 if task.higher_is_better else 1.0  # the best epoch has the lowest sign * metric
    best = {"value": math.inf, "epoch": -1, "state": None}
    history = []
    net = ranks.wrap(model)
    for epoch in range(t["epochs"]):
        started = time.perf_counter()
        train_ds.set_epoch(epoch)
        batches = epoch_batches(len(train_ds), t["batch_size"], t["seed"], epoch)
        loader = DataLoader(train_ds, batch_sampler=[ranks.part(b) for b in batches], num_workers=t["workers"])
        model.train()
        seen, loss_sum = 0, 0.0
        with progress.bar(f"epoch {epoch + 1}/{t['epochs']}", len(loader)) as tick:
            for step, (x, y) in enumerate(loader):
                for g in opt.param_groups:
                    g["lr"] = _lr_at(epoch, step, len(loader), cfg)
                loss = loss_fn(net(x), y, x)
                opt.zero_grad(set_to_none=True)
                (loss * ranks.scale(batches[step])).backward()
                opt.step()
                seen += len(y)
                loss_sum += loss.detach().item() * len(y)
                tick(1)
        seen, loss_sum = ranks.total(seen, loss_sum)
        if not ranks.main:
            continue
        model.eval()
        val = task.metrics(predict_logits(model, val_images, spec), val_targets)
        row = {"train_loss": loss_sum / seen, **{f"val_{k}": v for k, v in val.items() if isinstance(v, float)},
               "lr": opt.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started}  # fmt: skip
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in row.items()}})
        log_metrics(row, epoch + 1)
        progress.info(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.5f} | val {task.summary(val)} "
            f"({row['epoch_seconds']:.1f}s)"
        )
        if sign * val[task.primary] < best["value"]:
            best.update(value=sign * val[task.primary], epoch=epoch + 1, state=copy.deepcopy(model.state_dict()))
    if not ranks.main:
        return None
    model.load_state_dict(best["state"])
    return {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "best_val": sign * best["value"],
        "history": history,
    }


def train_spatial(cfg: dict, task: Task, *, config_path: str | None = None,
                  ranks: Ranks = SINGLE) -> CanonicalModel | None:  # fmt: skip
    """Train, evaluate and export a localisation or detection model into a canonical model directory
    (one MLflow run; on several workers, rank 0 writes it and the others return None)."""
    import mlflow
    import torch

    from .models import set_bn_momentum

    m, t = cfg["model"], cfg["train"]
    manifest = load_manifest(cfg["data"]["manifest"])
    task.spec["classes"] = len(manifest.classes)
    task.targets(sorted(manifest.files, key=lambda r: r.path), manifest.classes)  # every missing annotation, at once
    splits = {s: sorted(manifest.subset(s), key=lambda r: r.path) for s in ("train", "val", "test")}
    if not all(splits.values()):
        raise DataError(f"dataset {manifest.name!r} needs images in train, val and test")
    targets = {s: task.targets(recs, manifest.classes) for s, recs in splits.items()}
    _make_threads(t, ranks)
    torch.manual_seed(t["seed"])
    h, w = m["image_size"]
    model = task_module(m["architecture"], task, (h, w), m["pretrained"])
    set_bn_momentum(model, t["bn_momentum"])  # MobileNetV3's 0.01 leaves eval statistics far behind a short run
    from .data import load_images

    images = {}
    with progress.bar("loading images", sum(len(r) for r in splits.values())) as tick:
        for s, recs in splits.items():
            images[s] = load_images(manifest, recs, max_side=2 * max(h, w), progress=tick)
    spec = make_spec(h, w)
    train_ds = _SpatialDataset(images["train"], targets["train"], spec, task=task, augment_cfg=cfg["augment"],
                               seed=t["seed"])  # fmt: skip
    started = time.perf_counter()
    with tracked_run(cfg, manifest, ranks, {"factory.task": task.name}) as (run, log_metrics):
        fitted = fit_spatial(model, task, train_ds, images["val"], targets["val"], spec, cfg, log_metrics, ranks)
        if not ranks.main:
            return None
        seconds = time.perf_counter() - started
        model.eval()
        test = task.metrics(predict_logits(model, images["test"], spec), targets["test"])
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if isinstance(v, float)})
        out = Path(cfg["output"]["dir"])
        with atomic_dir(out) as tmp:
            torch.save(model.state_dict(), tmp / WEIGHTS_NAME)
            parity = _onnx_checked(model, tmp, cfg, images["test"], spec)
            model_uri = _log_onnx_model(tmp, parity[2], parity[3]) if cfg["tracking"]["log_model"] else None
            card = {
                "schema": CARD_SCHEMA,
                "name": m["name"],
                "task": task.name,
                "architecture": m["architecture"],
                "labels": manifest.classes,
                "input": input_spec(spec),
                "preprocessing": spec,
                "output": task.output(manifest.classes, **({"grid": task.spec["grid"]} if "grid" in task.spec else {})),
                "files": card_files(tmp),
                "complexity": {
                    "params": int(sum(p.numel() for p in model.parameters())),
                    "macs": count_macs(model, h, w),
                },
                "metrics": {
                    "test": test,
                    "val": {task.primary: fitted["best_val"], "n": len(images["val"])},
                    "training": {k: fitted[k] for k in ("best_epoch", "epochs_run")} | _training_facts(cfg, seconds),
                },
                "onnx_parity": {
                    "n": parity[1],
                    "max_abs_diff": parity[0],
                    "tolerance": cfg["eval"]["parity_tolerance"],
                },
                "history": fitted["history"],
                "lineage": card_lineage(cfg, config_path, manifest, run, model_uri),
                "reference_profile": task.reference_profile(
                    predict_logits(model, images["val"], spec),
                    manifest.classes,
                    [image_stats(im) for im in images["val"]],
                    "val",
                ),  # fmt: skip
            }
            write_json(tmp / CARD_NAME, card)
            write_json(tmp / "metrics.json", {"test": test, "onnx_max_abs_diff": parity[0],
                                              "epochs_run": fitted["epochs_run"]})  # fmt: skip
            mlflow.log_artifact(str(tmp / CARD_NAME))
    return CanonicalModel(out, card)
