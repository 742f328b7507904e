"""What a model the factory did not train arrives as, and how each kind is opened.

``detect_kind`` reads the file's bytes, not its name: a ``torch.export`` program (``.pt2``: a zip with
``archive_format`` and ``models/``), a TorchScript archive (a zip with ``code/`` and ``constants.pkl``), a
``torch.save`` state_dict (a zip with ``data.pkl``) or an ONNX model (protobuf). State dicts load with
``weights_only=True`` (a pickle that holds code is refused, never run); the other kinds run the user's
graph, as any runtime would, but never unpickle arbitrary objects.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import ModelError

__all__ = [
    "KINDS",
    "detect_kind",
    "load_state_dict",
    "strict_load",
    "load_program",
    "load_torchscript",
    "source_module",
]

KINDS = ("onnx", "torch-export", "torchscript", "state-dict")
_PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, Lightning-style wrappers, torch.compile


def detect_kind(path: Path) -> str:
    """One of :data:`KINDS`, from the file's contents; anything else is a ModelError."""
    if not path.is_file():
        raise ModelError(f"{path} does not exist", hint="name a local model file (.onnx, .pt2, .pt, .pth)")
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelError(f"{path}: unreadable archive ({exc})") from None
        tails = {n.split("/", 1)[-1] for n in names}
        if "archive_format" in tails or any(t.startswith("models/") for t in tails):
            return "torch-export"
        if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "state-dict"
        raise ModelError(f"{path} is a zip archive but not a PyTorch file (no data.pkl, code/ or models/)")
    with path.open("rb") as f:
        head = f.read(64)
    if head[:1] == b"\x80":  # a legacy (pre-zip) torch.save pickle
        return "state-dict"
    from .onnx_graph import load_onnx

    load_onnx(path)  # raises "is not an ONNX model" for anything else
    return "onnx"


def load_state_dict(path: Path) -> dict:
    """A state_dict from ``torch.save`` (also one wrapped in a checkpoint's ``state_dict``/``model`` key)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled code, RuntimeError for corrupt zips
        raise ModelError(
            f"{path}: not a plain state_dict ({str(exc).splitlines()[0][:200]})",
            hint="save weights with torch.save(model.state_dict(), path); pickled modules are never unpickled",
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return state


def strict_load(module, state: dict, source: str) -> None:
    """Load every tensor of ``state`` into ``module`` (a common wrapper prefix is stripped); any missing,
    unexpected or differently shaped tensor is a ModelError naming the first few."""
    own = module.state_dict()
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''} ({len(items)})"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if items
        ]
        raise ModelError(
            f"{source} does not fit the architecture: " + "; ".join(parts),
            hint="name the architecture the weights were trained with (--architecture) and the label count it has",
        )
    module.load_state_dict(state, strict=True)


def _program_module_class():
    import torch

    class _ProgramModule(torch.nn.Module):
        """An exported program's module as a plain nn.Module: ``train()``/``eval()`` are no-ops (an exported
        graph is already frozen in the mode it was exported in; torch refuses to switch it)."""

        def __init__(self, graph_module):
            super().__init__()
            self.program = graph_module

        def forward(self, x):
            out = self.program(x)
            return out[0] if isinstance(out, (tuple, list)) else out

        def train(self, mode: bool = True):
            return self

    return _ProgramModule


def load_program(path: Path):
    """``torch.export.load`` of a ``.pt2`` file: (the ExportedProgram, its module as an nn.Module)."""
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelError(f"{path}: torch.export.load failed: {str(exc).splitlines()[0][:200]}") from None
    return program, _program_module_class()(program.module())


def load_torchscript(path: Path):
    """``torch.jit.load`` of a TorchScript archive, in eval mode."""
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # RuntimeError for anything torch.jit cannot read
        raise ModelError(f"{path}: torch.jit.load failed: {str(exc).splitlines()[0][:200]}") from None


def source_module(path: Path, card: dict):
    """The torch module of an imported canonical model with no architecture to rebuild: the exported
    program it was imported from, else its ONNX graph through onnx2torch."""
    files = card["files"]
    if "program" in files:
        return load_program(path / files["program"]["path"])[1].eval()
    from .onnx_module import torch_from_onnx

    return torch_from_onnx(path / files["onnx"]["path"])
