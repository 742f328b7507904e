"""``factory train``: seeded CPU training tracked in MLflow, ending in a canonical model directory."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, progress
from .._io import atomic_dir, sha256_file, write_json
from ..config import config_hash
from ..data.manifest import load_manifest
from ..errors import DataError, ExportError, UnknownNameError
from ..lineage import git_revision, package_versions
from ..preprocess import input_spec, make_spec, preprocess
from ..stats import image_stats
from ..tasks import get_task
from .canonical import (
    CARD_NAME,
    CARD_SCHEMA,
    ONNX_NAME,
    ONNX_OPSET,
    WEIGHTS_NAME,
    CanonicalModel,
    count_macs,
    export_onnx,
    onnx_logits,
)
from .distributed import SINGLE, Ranks, epoch_batches, world_size
from .evaluate import classification_metrics, plot_confusion, reference_profile
from .models import create_model, set_bn_momentum

__all__ = ["train", "fit", "predict_logits"]

PACKAGES = ["torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "numpy", "opencv-python-headless", "mlflow"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _lr_at(epoch: int, step: int, steps: int, cfg: dict) -> float:
    t = cfg["train"]
    pos = epoch + step / max(steps, 1)
    if pos < t["warmup_epochs"]:
        return t["lr"] * (pos + 1 / max(steps, 1)) / t["warmup_epochs"]
    if t["scheduler"] == "constant":
        return t["lr"]
    span = max(t["epochs"] - t["warmup_epochs"], 1)
    return t["lr"] * 0.5 * (1 + math.cos(math.pi * min((pos - t["warmup_epochs"]) / span, 1.0)))


def predict_logits(model, images: list[np.ndarray], spec: dict, batch: int = 64) -> np.ndarray:
    """Logits of a torch module on images, preprocessed as the spec says, in batches."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            outs.append(model(torch.from_numpy(preprocess(images[i : i + batch], spec))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _make_optimizer(model, t: dict):
    import torch

    if t["optimizer"] == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"], nesterov=True
        )
    return torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])


def fit(
    model,
    train_ds,
    val_images,
    val_labels,
    spec,
    cfg,
    log_metrics,
    teacher=None,
    distill_weight: float = 0.7,
    temperature: float = 2.0,
    ranks: Ranks = SINGLE,
) -> dict | None:
    """Train with the configured schedule; keep the best epoch by validation top-1 (then loss).

    With a ``teacher`` (e.g. the canonical model while fine-tuning a pruned copy), the loss mixes the
    label loss with the KL divergence to the teacher's softened outputs (knowledge distillation).

    Deterministic for a given seed, whatever ran before in the process: the global generator (dropout)
    is seeded here, batches and augmentations have their own seeded generators, and PyTorch is asked
    for deterministic kernels. (Floating-point results can still differ between CPU models.)
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    t = cfg["train"]
    torch.manual_seed(t["seed"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    opt = _make_optimizer(model, t)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])
    if teacher is not None:
        teacher.eval()
    net = ranks.wrap(model)
    best = {"top1": -1.0, "loss": math.inf, "epoch": -1, "state": None}
    stale, history = 0, []
    for epoch in range(t["epochs"]):
        started = time.perf_counter()
        train_ds.set_epoch(epoch)
        batches = epoch_batches(len(train_ds), t["batch_size"], t["seed"], epoch)
        loader = DataLoader(train_ds, batch_sampler=[ranks.part(b) for b in batches], num_workers=t["workers"])
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        with progress.bar(f"epoch {epoch + 1}/{t['epochs']}", len(loader)) as tick:
            for step, (x, y) in enumerate(loader):
                for g in opt.param_groups:
                    g["lr"] = _lr_at(epoch, step, len(loader), cfg)
                out = net(x)
                loss = loss_fn(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x) / temperature, dim=1)
                    kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, reduction="batchmean") * temperature**2
                    loss = (1 - distill_weight) * loss + distill_weight * kd
                opt.zero_grad(set_to_none=True)
                (loss * ranks.scale(batches[step])).backward()
                opt.step()
                seen += len(y)
                correct += int((out.argmax(1) == y).sum())
                loss_sum += loss.detach().item() * len(y)
                tick(1)
        seen, correct, loss_sum = ranks.total(seen, correct, loss_sum)
        if not ranks.main:
            if ranks.agree(False):
                break
            continue
        model.eval()
        val_logits = predict_logits(model, val_images, spec)
        val_loss = float(loss_fn(torch.from_numpy(val_logits), torch.as_tensor(val_labels)))
        val_top1 = float((val_logits.argmax(1) == np.asarray(val_labels)).mean())
        row = {
            "train_loss": loss_sum / seen,
            "train_top1": correct / seen,
            "val_loss": val_loss,
            "val_top1": val_top1,
            "lr": opt.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in row.items()}})
        log_metrics(row, epoch + 1)
        progress.info(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.4f} | val loss "
            f"{val_loss:.4f} top1 {val_top1:.4f} ({row['epoch_seconds']:.1f}s)"
        )
        improved = val_top1 > best["top1"] + t["early_stopping"]["min_delta"] or (
            val_top1 >= best["top1"] and val_loss < best["loss"]
        )
        if improved:
            best.update(top1=val_top1, loss=val_loss, epoch=epoch + 1, state=copy.deepcopy(model.state_dict()))
            stale = 0
        else:
            stale += 1
        stop = bool(t["early_stopping"]["patience"]) and stale >= t["early_stopping"]["patience"]
        if ranks.agree(stop):
            progress.info(f"early stopping: no val improvement for {stale} epochs (best epoch {best['epoch']})")
            break
    if not ranks.main:
        return None
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "epochs_run": len(history), "best_val_top1": best["top1"], "history": history}


@dataclass
class _Splits:
    """The dataset's images and label indices per split, decoded once."""

    manifest: object
    images: dict
    labels: dict


def _checked_manifest(cfg: dict):
    manifest = load_manifest(cfg["data"]["manifest"])
    classes = manifest.classes
    if len(classes) < 2:
        raise DataError(f"dataset {manifest.name!r} has {len(classes)} class; classification needs at least 2")
    splits = {s: manifest.subset(s) for s in ("train", "val", "test")}
    empty = [s for s, recs in splits.items() if not recs]
    if empty:
        raise DataError(
            f"dataset {manifest.name!r} has no images in split(s) {empty}",
            hint="add images or change the split fractions",
        )
    return manifest


def _load_splits(cfg: dict, manifest) -> _Splits:
    from .data import load_images

    classes = manifest.classes
    splits = {s: manifest.subset(s) for s in ("train", "val", "test")}
    h, w = cfg["model"]["image_size"]
    index = {c: i for i, c in enumerate(classes)}
    images, labels = {}, {}
    with progress.bar("loading images", len(manifest.files)) as tick:
        for s, recs in splits.items():
            images[s] = load_images(manifest, recs, max_side=2 * max(h, w), progress=tick)
            labels[s] = [index[r.label] for r in recs]
    return _Splits(manifest, images, labels)


def _reference_images(data) -> tuple[list, str]:
    """What devices should be seeing, for drift monitoring: the validation split, or, for a dataset version
    that added field captures, the validation part of its newest field slice (the conditions the new model
    is released into; the old data still trains and judges it)."""
    newest = data.manifest.source.get("field_slice")
    if newest:
        picked = [
            im for im, r in zip(data.images["val"], data.manifest.subset("val"), strict=True) if r.slice == newest
        ]
        if len(picked) >= 20:
            return picked, f"val:{newest}"
    return data.images["val"], "val"


def _make_threads(t: dict, ranks: Ranks = SINGLE) -> None:
    import torch

    # One torch thread per core not used by augmentation workers (the cores shared among the training
    # workers): on a 2-core machine an oversubscribed OpenMP pool trains 5-10x slower (measured).
    torch.set_num_threads(t["threads"] or max(1, (os.cpu_count() or 1) // ranks.local_world - t["workers"]))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _make_model(cfg: dict, n_classes: int, ranks: Ranks = SINGLE):
    import torch

    t, m = cfg["train"], cfg["model"]
    torch.manual_seed(t["seed"])
    _make_threads(t, ranks)
    model = create_model(m["architecture"], n_classes, m["pretrained"])  # unknown names fail before data loading
    set_bn_momentum(model, t["bn_momentum"])
    return model


def _onnx_checked(
    model, folder: Path, cfg: dict, test_images: list, spec: dict
) -> tuple[float, int, np.ndarray, np.ndarray]:
    """Export ONNX into ``folder`` and compare it with PyTorch on test images; (max diff, n, batch, logits)."""
    import torch

    h, w = cfg["model"]["image_size"]
    progress.info("exporting ONNX graph...")
    export_onnx(model, folder / ONNX_NAME, h, w)
    n = min(cfg["eval"]["parity_images"], len(test_images))
    batch = preprocess(test_images[:n], spec)
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(batch)).numpy()
    diff = float(np.abs(onnx_logits(folder / ONNX_NAME, batch) - ref_logits).max())
    if diff > cfg["eval"]["parity_tolerance"]:
        raise ExportError(
            "onnx-parity",
            f"ONNX logits differ from PyTorch by {diff:.3g} on {n} test images "
            f"(tolerance {cfg['eval']['parity_tolerance']:g})",
        )
    return diff, n, batch, ref_logits


def _log_onnx_model(folder: Path, batch: np.ndarray, logits: np.ndarray) -> str:
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    signature = infer_signature({"input": batch[:2]}, {"logits": logits[:2]})
    info = mlflow.onnx.log_model(
        onnx.load(str(folder / ONNX_NAME)),
        name="model",
        signature=signature,
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    return info.model_uri


def card_files(folder: Path) -> dict:
    """The model card's ``files``: the weights and the ONNX graph in ``folder``, with their sha256."""
    return {
        "weights": {"path": WEIGHTS_NAME, "sha256": sha256_file(folder / WEIGHTS_NAME), "format": "torch state_dict"},
        "onnx": {
            "path": ONNX_NAME,
            "sha256": sha256_file(folder / ONNX_NAME),
            "opset": ONNX_OPSET,
            "dynamic_batch": True,
        },
    }


def card_lineage(cfg: dict, config_path, manifest, run, model_uri) -> dict:
    """The model card's ``lineage``: dataset, config, seed, git, the MLflow run, package versions."""
    import mlflow

    return {
        "dataset": manifest.name,
        "dataset_hash": manifest.dataset_hash,
        "dataset_manifest": str(manifest.location),
        "config": config_path,
        "config_hash": config_hash(cfg),
        "config_values": cfg,
        "seed": cfg["train"]["seed"],
        "git": git_revision(),
        "mlflow": {
            "tracking_uri": mlflow.get_tracking_uri(),
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": model_uri,
        },
        "packages": package_versions(PACKAGES) | {"edge-model-factory": __version__},
    }


def _card(
    cfg: dict,
    config_path,
    folder: Path,
    model,
    spec: dict,
    data: _Splits,
    fitted: dict,
    test: dict,
    ref: dict,
    parity: tuple,
    train_seconds: float,
    run,
    model_uri,
) -> dict:
    m = cfg["model"]
    h, w = m["image_size"]
    classes, manifest = data.manifest.classes, data.manifest
    return {
        "schema": CARD_SCHEMA,
        "name": m["name"],
        "task": "classification",
        "architecture": m["architecture"],
        "labels": classes,
        "input": input_spec(spec),
        "preprocessing": spec,
        "output": get_task("classification").output(classes),
        "files": card_files(folder),
        "complexity": {"params": int(sum(p.numel() for p in model.parameters())), "macs": count_macs(model, h, w)},
        "metrics": {
            "test": test,
            "val": {"top1": round(fitted["best_val_top1"], 6), "n": len(data.labels["val"])},
            "training": {k: fitted[k] for k in ("best_epoch", "epochs_run")} | _training_facts(cfg, train_seconds),
        },
        "onnx_parity": {"n": parity[1], "max_abs_diff": parity[0], "tolerance": cfg["eval"]["parity_tolerance"]},
        "history": fitted["history"],
        "lineage": card_lineage(cfg, config_path, manifest, run, model_uri),
        "reference_profile": ref,
    }


def _training_facts(cfg: dict, seconds: float) -> dict:
    """How the model was trained, for its card: wall time and the data-parallel workers."""
    world = world_size(cfg)
    return {"seconds": round(seconds, 1), "workers": world, "nodes": cfg["distributed"]["nodes"],
            "backend": "gloo" if world > 1 else None}  # fmt: skip


def _precheck(cfg: dict, task) -> None:
    """What would stop every training worker, checked once before any is started."""
    from .distributed import check_layout
    from .models import list_models

    if task.name == "classification":
        manifest = _checked_manifest(cfg)
    else:
        manifest = load_manifest(cfg["data"]["manifest"])
    if cfg["model"]["architecture"] not in list_models():
        raise UnknownNameError("architecture", cfg["model"]["architecture"], list_models(),
                               hint="set model.architecture in the training config")  # fmt: skip
    check_layout(cfg, len(manifest.subset("train")))


@contextlib.contextmanager
def tracked_run(cfg: dict, manifest, ranks: Ranks, tags: dict):
    """The training's one MLflow run (rank 0 only: the other workers log nothing) with the config as
    parameters; yields ``(run or None, log_metrics)``."""
    if not ranks.main:
        yield None, lambda row, step: None
        return
    import mlflow

    from .tracking import setup_experiment

    m = cfg["model"]
    setup_experiment(cfg["tracking"]["experiment"])
    with mlflow.start_run(run_name=f"train-{m['name']}-{m['architecture']}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in _flatten(cfg).items()})
        mlflow.set_tags(
            {"factory.stage": "train", "factory.dataset_hash": manifest.dataset_hash, "factory.dataset": manifest.name,
             "factory.config_hash": config_hash(cfg), "factory.workers": str(ranks.world)} | tags
        )  # fmt: skip
        mlflow.log_dict(cfg, "config.json")
        yield run, lambda row, step: mlflow.log_metrics(row, step=step)


def train(cfg: dict, *, config_path: str | None = None, ranks: Ranks | None = None) -> CanonicalModel | None:
    """Train, evaluate and export the canonical model directory; one MLflow run with everything.

    With ``distributed.workers`` (or ``nodes``) above 1, the training runs on that many processes
    (:mod:`.distributed`); each calls this again with its ``ranks``, and only rank 0 returns the model (the
    others, and a node that does not hold rank 0: None)."""
    import mlflow
    import torch

    from ..tasks import get_task
    from .data import ImageDataset

    task = get_task(cfg["model"]["task"])
    if ranks is None and world_size(cfg) > 1:
        _precheck(cfg, task)
        from .distributed import launch

        return launch(cfg, config_path)
    ranks = ranks or SINGLE
    if task.name != "classification":
        from .spatial import train_spatial

        return train_spatial(cfg, task, config_path=config_path, ranks=ranks)
    m = cfg["model"]
    manifest = _checked_manifest(cfg)
    classes = manifest.classes
    model = _make_model(cfg, len(classes), ranks)  # an unknown architecture fails before the images are decoded
    data = _load_splits(cfg, manifest)
    spec = make_spec(*m["image_size"])
    train_ds = ImageDataset(
        data.images["train"], data.labels["train"], spec, augment_cfg=cfg["augment"], seed=cfg["train"]["seed"]
    )
    started = time.perf_counter()
    with tracked_run(cfg, manifest, ranks, {}) as (run, log_metrics):
        fitted = fit(model, train_ds, data.images["val"], data.labels["val"], spec, cfg, log_metrics, ranks=ranks)
        if not ranks.main:
            return None
        train_seconds = time.perf_counter() - started
        model.eval()
        test = classification_metrics(
            np.asarray(data.labels["test"]), predict_logits(model, data.images["test"], spec), classes
        )
        ref_images, ref_split = _reference_images(data)
        ref = reference_profile(
            predict_logits(model, ref_images, spec), classes, [image_stats(im) for im in ref_images], ref_split
        )
        mlflow.log_metrics(
            {"test_top1": test["top1"], "best_val_top1": fitted["best_val_top1"], "train_seconds": train_seconds}
        )
        out = Path(cfg["output"]["dir"])
        with atomic_dir(out) as tmp:
            torch.save(model.state_dict(), tmp / WEIGHTS_NAME)
            parity = _onnx_checked(model, tmp, cfg, data.images["test"], spec)
            plot_confusion(
                test["confusion_matrix"],
                classes,
                tmp / "confusion_matrix.png",
                f"{m['architecture']} test top-1 {test['top1']:.4f}",
            )
            model_uri = _log_onnx_model(tmp, parity[2], parity[3]) if cfg["tracking"]["log_model"] else None
            card = _card(
                cfg, config_path, tmp, model, spec, data, fitted, test, ref, parity, train_seconds, run, model_uri
            )
            write_json(tmp / CARD_NAME, card)
            write_json(
                tmp / "metrics.json",
                {
                    "test_top1": test["top1"],
                    "val_top1": round(fitted["best_val_top1"], 6),
                    "onnx_max_abs_diff": parity[0],
                    "epochs_run": fitted["epochs_run"],
                },
            )
            mlflow.log_artifact(str(tmp / CARD_NAME))
            mlflow.log_artifact(str(tmp / "confusion_matrix.png"))
    return CanonicalModel(out, card)
