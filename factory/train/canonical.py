"""The canonical model directory: ``weights.pt``, ``model.onnx`` and ``model_card.json``.

It is the contract between training and every later stage: a model card carries the architecture,
input spec, preprocessing, labels, held-out metrics, lineage and the reference profile, so a builder
needs nothing but the directory. :func:`load_canonical` checks the files against the card's hashes.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import read_json, sha256_file
from ..errors import ExportError, ModelError

__all__ = [
    "CARD_SCHEMA",
    "CanonicalModel",
    "export_onnx",
    "onnx_logits",
    "load_canonical",
    "count_macs",
    "model_identity",
]

CARD_SCHEMA = "factory.model-card/1"
CARD_NAME = "model_card.json"
WEIGHTS_NAME = "weights.pt"
ONNX_NAME = "model.onnx"
ONNX_OPSET = 18


def export_onnx(module, path: str | Path, height: int, width: int, opset: int = ONNX_OPSET) -> Path:
    """Export a torch module to ONNX: one file, ``input`` NCHW float32 with a dynamic batch, ``logits`` out
    (an ``ExportedProgram`` keeps the shapes it was exported with)."""
    import onnx
    import torch

    path = Path(path)
    traced = {}  # an imported ExportedProgram keeps its own shapes: no re-tracing
    if not isinstance(module, torch.export.ExportedProgram):
        module = module.eval()
        traced = {"args": (torch.zeros(2, 3, height, width),), "dynamic_shapes": ({0: "batch"},)}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                f=None,
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                external_data=False,
                verbose=False,
                **traced,
            )
        model = program.model_proto
    except Exception as exc:  # the exporter raises many types; keep the operator if it names one
        text = f"{exc}"
        op = None
        for token in text.split():
            if token.startswith(("aten::", "aten.", "torchvision::")):
                op = token.strip("'\"`,.:()")
                break
        raise ExportError(
            "onnx-export", text.splitlines()[0][:500] if text else type(exc).__name__, operator=op
        ) from exc
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    tmp.replace(path)
    return path


def onnx_logits(path: str | Path, batch: np.ndarray, threads: int = 0) -> np.ndarray:
    """Run an ONNX model on a batch with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: batch})[0]


def count_macs(module, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(torch.zeros(1, 3, height, width))
    return int(counter.get_total_flops() // 2)


def model_identity(card: dict) -> str:
    """The sha256 that names a canonical model's weights: its state_dict, else (a model imported without an
    architecture) the exported program or the ONNX graph that holds them."""
    files = card["files"]
    return files.get("weights", files.get("program", files["onnx"]))["sha256"]


@dataclass
class CanonicalModel:
    path: Path
    card: dict

    @property
    def weights(self) -> Path:
        if not self.has_architecture:
            raise ModelError(
                f"{self.path}: the model was imported without an architecture; it has no weights.pt",
                hint="import it with --architecture NAME and a state_dict to prune or retrain it",
            )
        return self.path / self.card["files"]["weights"]["path"]

    @property
    def identity(self) -> str:
        """sha256 of the file that holds the weights (see :func:`model_identity`)."""
        return model_identity(self.card)

    @property
    def has_architecture(self) -> bool:
        """Whether the module can be rebuilt from an architecture and a state_dict (so pruned, fine-tuned and
        retrained); a model imported as ONNX, TorchScript or a bare exported program cannot."""
        return "weights" in self.card["files"]

    @property
    def source(self) -> dict | None:
        """Where an imported model came from (kind, file, sha256); None for a model the factory trained."""
        return self.card.get("source")

    @property
    def main_file(self) -> Path:
        """The file whose size a benchmark reports: the weights, else the exported program or ONNX graph."""
        files = self.card["files"]
        return self.path / files.get("weights", files.get("program", files["onnx"]))["path"]

    @property
    def onnx(self) -> Path:
        return self.path / self.card["files"]["onnx"]["path"]

    @property
    def labels(self) -> list[str]:
        return self.card["labels"]

    @property
    def task(self) -> str:
        """What the model is for (cards written before tasks existed are classifiers)."""
        return self.card.get("task") or "classification"

    @property
    def preprocessing(self) -> dict:
        return self.card["preprocessing"]

    @property
    def input_hw(self) -> tuple[int, int]:
        h, w = self.card["preprocessing"]["resize"]
        return int(h), int(w)

    def build_module(self):
        """Rebuild the torch module from the card and load its weights."""
        import torch

        from .models import create_model

        if not self.has_architecture:
            from .sources import source_module

            return source_module(self.path, self.card)
        if self.task != "classification":
            from ..tasks import get_task
            from .spatial import task_module

            module = task_module(self.card["architecture"], get_task(self.task, self.card["output"]), self.input_hw)
        else:
            module = create_model(self.card["architecture"], len(self.labels))
        try:
            module.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise ModelError(f"{self.weights}: cannot load weights into {self.card['architecture']}: {exc}") from None
        return module.eval()


def load_canonical(path: str | Path, *, verify: bool = True) -> CanonicalModel:
    """Open a canonical model directory; missing files, bad JSON or hash mismatches are ModelErrors."""
    path = Path(path)
    card_path = path / CARD_NAME
    if not card_path.is_file():
        raise ModelError(
            f"{path} is not a canonical model directory (no {CARD_NAME})", hint="train one with `factory train`"
        )
    try:
        card = read_json(card_path)
        files = card["files"]
        _ = card["labels"], card["preprocessing"]["resize"], card["architecture"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{card_path}: malformed model card ({type(exc).__name__}: {exc})") from None
    if card.get("schema") != CARD_SCHEMA:
        raise ModelError(f"{card_path}: schema {card.get('schema')!r}, expected {CARD_SCHEMA!r}")
    if verify:
        for role, entry in files.items():
            f = path / entry["path"]
            if not f.is_file():
                raise ModelError(f"{path}: the {role} file {entry['path']} is missing")
            if sha256_file(f) != entry["sha256"]:
                raise ModelError(
                    f"{f}: sha256 does not match the model card; the file is corrupt or was replaced",
                    hint="re-run `factory train`, or restore the file",
                )
    return CanonicalModel(path, card)
