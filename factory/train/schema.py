"""The training config schema (``configs/train.yaml``). Keys without a default are required."""

from __future__ import annotations

from ..config import Key

__all__ = ["TRAIN_SCHEMA"]


def _positive(v) -> str | None:
    return None if v > 0 else "must be > 0"


def _size(v) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x >= 16 for x in v)
    return None if ok else "must be [height, width], integers >= 16"


def _range(v) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and 0 < v[0] <= v[1]
    return None if ok else "must be [low, high] with 0 < low <= high"


TRAIN_SCHEMA = {
    "data": {
        "manifest": Key(str, help="dataset manifest dataset.json (or its folder) from `factory data synth|import`"),
    },
    "model": {
        "name": Key(str, "id-docs", "model name used for bundles and the MLflow registry"),
        "task": Key(
            str,
            "classification",
            "what the model is for (factory.tasks): classification | document-localisation | detection",
        ),
        "architecture": Key(str, help="torchvision.models name (e.g. mobilenet_v3_small) or tiny-cnn"),
        "pretrained": Key(str, None, "local weights file to start from; never downloaded", nullable=True),
        "image_size": Key(list, [128, 128], "model input [height, width]", check=_size),
    },
    "train": {
        "seed": Key(int, 0, "seeds data order, augmentation and initialisation"),
        "epochs": Key(int, help="maximum number of passes over the training split", check=_positive),
        "batch_size": Key(int, 32, check=_positive),
        "optimizer": Key(str, "adamw", choices=["adamw", "sgd"]),
        "lr": Key(float, 0.003, check=_positive),
        "weight_decay": Key(float, 0.0001),
        "momentum": Key(float, 0.9, "sgd only"),
        "label_smoothing": Key(float, 0.05),
        "scheduler": Key(str, "cosine", "learning-rate schedule", choices=["cosine", "constant"]),
        "warmup_epochs": Key(int, 1),
        "early_stopping": {
            "patience": Key(int, 0, "epochs without val improvement before stopping; 0 = fixed schedule"),
            "min_delta": Key(float, 0.001),
        },
        "bn_momentum": Key(
            float,
            0.1,
            "BatchNorm running-stat momentum; null keeps the architecture's "
            "(torchvision's MobileNetV3 uses 0.01, too slow for short CPU schedules)",
            nullable=True,
        ),
        "threads": Key(int, 0, "torch intra-op threads; 0 = cores minus workers"),
        "workers": Key(int, 1, "DataLoader worker processes for augmentation"),
    },
    "distributed": {
        "workers": Key(
            int,
            1,
            "data-parallel training processes (PyTorch DDP, gloo) on this machine; `factory train --workers N` sets it",
            check=_positive,
        ),
        "nodes": Key(int, 1, "machines training together, each running the same `factory train`", check=_positive),
        "rendezvous": Key(
            str, None, "HOST:PORT every node reaches (with nodes > 1); the node at HOST serves it", nullable=True
        ),
    },
    "augment": {
        "perspective": Key(float, 0.06, "corner jitter as a fraction of the image size"),
        "rotate_deg": Key(float, 8.0),
        "scale": Key(list, [0.85, 1.05], check=_range),
        "brightness": Key(float, 0.25),
        "contrast": Key(float, 0.25),
        "blur_p": Key(float, 0.3),
        "noise_std": Key(float, 5.0),
    },
    "eval": {
        "parity_images": Key(int, 64, "test images used to compare ONNX with PyTorch"),
        "parity_tolerance": Key(float, 1e-4, "max abs logit difference ONNX vs PyTorch"),
    },
    "output": {
        "dir": Key(str, help="canonical model directory to write"),
    },
    "tracking": {
        "experiment": Key(str, "factory", "MLflow experiment"),
        "log_model": Key(bool, True, "log the ONNX model to MLflow (loadable with mlflow.pyfunc)"),
    },
}
