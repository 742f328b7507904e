"""ONNX Runtime on the CPU: a session per model file, threads and graph optimization from the options."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._deps import require
from ...errors import ExportError
from . import Runtime, register_runtime

__all__ = ["OnnxRuntime", "session", "LEVELS"]

LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _ort():
    return require("onnxruntime", "onnxruntime", "device-onnxruntime", "the onnxruntime runtime")


def session(path: Path, threads: int, level: str, save_to: Path | None = None):
    """An InferenceSession on the CPU provider; ``save_to`` also writes the optimized graph."""
    ort = _ort()
    if level not in LEVELS:
        raise ExportError("ort-compile", f"graph_optimization {level!r} is not one of {', '.join(LEVELS)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Runner:
    def __init__(self, path: Path, threads: int, level: str):
        self.session = session(path, threads, level)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


@register_runtime
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    package = "onnxruntime"
    min_version = "1.20"
    artifact_files = ("model.onnx",)
    file_suffixes = (".onnx",)
    dynamic_batch = True
    options = {"threads": 2, "graph_optimization": "all"}  # applied online at load (see the export backend)

    def load_file(self, path, options):
        # A bundle's artifact is saved at `extended`; the level here adds what is specific to this CPU.
        options = {**self.options, **options}
        return _Runner(Path(path), int(options["threads"]), options["graph_optimization"])

    def declared_input_shape(self, path):
        dims = session(Path(path), 1, "disable").get_inputs()[0].shape
        return [d if isinstance(d, int) and d > 0 else None for d in dims]
