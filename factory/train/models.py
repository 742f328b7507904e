"""Model registry: every ``torchvision.models`` classifier by name, plus our own small ones.

``create_model(name, num_classes, pretrained=PATH)`` never downloads anything: pretrained weights come
only from a local file the user names. An unknown name raises an error listing the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError, UnknownNameError

__all__ = ["register_model", "list_models", "is_architecture", "create_model", "load_pretrained", "set_bn_momentum"]

_LOCAL: dict[str, Callable[[int], nn.Module]] = {}


def register_model(name: str):
    """Decorator: register a model factory ``fn(num_classes) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[[int], nn.Module]):
        _LOCAL[name] = fn
        return fn

    return deco


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def list_models() -> list[str]:
    """Every architecture ``create_model`` accepts: torchvision classifiers and local ones (and, with the
    ``timm`` extra, ``timm:NAME`` for any of timm's models, not listed here)."""
    return sorted(set(_torchvision_names()) | set(_LOCAL))


TIMM = "timm:"


def is_architecture(name: str) -> bool:
    """Whether ``create_model`` knows ``name`` (a ``timm:`` name when timm is installed and has it)."""
    if name.startswith(TIMM):
        from .._deps import require

        return name[len(TIMM) :] in require("timm", "timm", "timm", "timm architectures").list_models()
    return name in _LOCAL or name in _torchvision_names()


@register_model("tiny-cnn")
def tiny_cnn(num_classes: int) -> nn.Module:
    """Four conv-BN-ReLU blocks and a linear head: trains in seconds, for tests and smoke runs."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    return nn.Sequential(
        block(3, 16),
        block(16, 32),
        block(32, 64),
        block(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, num_classes),
    )


def create_model(name: str, num_classes: int, pretrained: str | Path | None = None) -> nn.Module:
    """A classifier by name with ``num_classes`` outputs; weights only from a local file."""
    if name in _LOCAL:
        model = _LOCAL[name](num_classes)
    elif name.startswith(TIMM):
        from .._deps import require

        timm = require("timm", "timm", "timm", "timm architectures")
        if name[len(TIMM) :] not in timm.list_models():
            raise UnknownNameError(
                "timm architecture", name[len(TIMM) :], timm.list_models()[:40], hint="see timm.list_models()"
            )
        model = timm.create_model(name[len(TIMM) :], pretrained=False, num_classes=num_classes)
    else:
        import torchvision.models as tvm

        if name not in _torchvision_names():
            raise UnknownNameError(
                "architecture", name, list_models(), hint="set model.architecture in the training config"
            )
        # Inception-style nets add auxiliary heads in train mode (a namedtuple, not logits): one head only
        extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)
        _tame_head(model, num_classes)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def _tame_head(model: nn.Module, num_classes: int) -> None:
    """Re-initialise a classifier head whose init scales with the class count. MNASNet (Kaiming by fan-out)
    and EfficientNet (uniform in 1/sqrt(classes)) size their last layer for 1,000 classes; with 8 its
    weights are ~10x larger than a fan-in init and the first epoch's logits explode (train loss 8 on 8
    classes, 0.6 top-1 after 8 epochs where other families reach 0.95). Such a head gets N(0, 0.01), as
    MobileNet and RegNet start theirs; every other head is left as the architecture made it."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        return
    head = heads[-1]
    if float(head.weight.detach().std()) > 1.5 / head.in_features**0.5:
        nn.init.normal_(head.weight, 0.0, 0.01)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    """Set every BatchNorm's running-stat momentum (None keeps the architecture's own)."""
    if momentum is None:
        return
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = momentum


def load_pretrained(model: nn.Module, path: str | Path) -> dict:
    """Load a local checkpoint; tensors whose shape differs (e.g. a 1000-class head) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"pretrained weights file {path} does not exist",
            hint="the factory never downloads weights; name a local .pth file",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle/zip
        raise ModelError(f"cannot read pretrained weights {path}: {exc}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state_dict")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ModelError(
            f"{path}: no tensor matches the architecture's names and shapes", hint="is it the same architecture?"
        )
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "skipped": sorted(set(own) - set(usable))}
