"""OpenVINO on the CPU: the IR compiled with threads, performance hint and an explicit precision hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._deps import require
from . import Runtime, register_runtime

__all__ = ["OpenVinoRuntime", "compile_config"]


def _ov():
    return require("openvino", "openvino", "device-openvino", "the openvino runtime")


def compile_config(options: dict) -> dict:
    """The ``compile_model`` properties for resolved runtime options."""
    return {
        "INFERENCE_NUM_THREADS": int(options["threads"]),
        "PERFORMANCE_HINT": options["performance_hint"],
        "INFERENCE_PRECISION_HINT": options["inference_precision"],
    }


class _Runner:
    def __init__(self, xml: Path, options: dict):
        ov = _ov()
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", compile_config(options))
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return np.array(self.request.get_output_tensor(0).data, copy=True)


@register_runtime
class OpenVinoRuntime(Runtime):
    name = "openvino"
    package = "openvino"
    min_version = "2024.0"
    artifact_files = ("model.xml", "model.bin")
    file_suffixes = (".xml",)
    dynamic_batch = True
    options = {"threads": 2, "performance_hint": "LATENCY", "inference_precision": "auto"}

    def resolve_options(self, options, precision):
        out = {**self.options, **options}
        if out["inference_precision"] == "auto":
            # Always explicit: CPUs with bf16/AMX otherwise pick bf16 silently and change accuracy.
            out["inference_precision"] = "f16" if precision == "fp16" else "f32"
        return out

    def load_file(self, path, options):
        return _Runner(Path(path), self.resolve_options(options, "fp32"))

    def declared_input_shape(self, path):
        shape = _ov().Core().read_model(str(path)).inputs[0].get_partial_shape()
        return [d.get_length() if d.is_static else None for d in shape]
