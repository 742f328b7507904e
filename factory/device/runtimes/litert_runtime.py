"""LiteRT (TFLite) with the XNNPACK delegate.

litert-torch cannot export a dynamic batch for torchvision classifiers (the flatten before the head
fails to lower), so artifacts have batch 1 and the runner resizes its input for larger batches. Some
graphs cannot be resized: litert-torch writes the batch of 1 into the shape constants of RESHAPE ops
(a channel shuffle's view, a LayerNorm's permutes), and XNNPACK then "fails to reshape" the node. The
runner then runs such a model one image at a time, as it was exported (:func:`constant_batch_reshapes`
names the ops; the build records them).
Static int8 models have int8 input/output tensors; the runner quantizes and dequantizes with the
scales stored in the model, so callers always pass and receive float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._deps import require
from ..._quiet import native_quiet
from . import Runtime, register_runtime

__all__ = [
    "LiteRtRuntime",
    "DELEGATES",
    "interpreter_class",
    "open_interpreter",
    "xnnpack_partitions",
    "constant_batch_reshapes",
    "resizable",
]


def interpreter_class():
    """``ai_edge_litert.interpreter.Interpreter`` (or an error naming the pip command)."""
    return require("ai_edge_litert.interpreter", "ai-edge-litert", "device-litert", "the litert runtime").Interpreter


def xnnpack_partitions(interpreter) -> int:
    """How many subgraphs the XNNPACK delegate took over (0 means it ran on the slow reference kernels)."""
    return sum(1 for op in interpreter._get_ops_details() if op.get("op_name") == "DELEGATE")


DELEGATES = ("xnnpack", "none")


def constant_batch_reshapes(interpreter) -> list[str]:
    """The RESHAPE ops whose target shape is a constant with the export's batch of 1 in front (by output
    tensor name): they make the model unable to run a larger batch."""
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        inputs = list(op["inputs"]) if op["inputs"] is not None else []
        if op["op_name"] != "RESHAPE" or len(inputs) < 2:
            continue
        try:
            shape = interpreter.get_tensor(inputs[1])  # a constant: readable before allocate_tensors
        except ValueError:
            continue  # computed at run time
        if shape.ndim == 1 and len(shape) > 1 and int(shape[0]) == 1:
            found.append(names[op["outputs"][0]])
    return found


def open_interpreter(path: str, threads: int, delegate: str = "xnnpack"):
    """An interpreter with the XNNPACK delegate (the default), or with none: the built-in kernels only, for
    a model XNNPACK cannot prepare (slower, chosen in the target profile with ``runtime.delegate: none``)."""
    if delegate not in DELEGATES:
        from ...errors import ConfigError

        raise ConfigError(f"runtime.delegate {delegate!r} is not one of {', '.join(DELEGATES)}")
    mod = require("ai_edge_litert.interpreter", "ai-edge-litert", "device-litert", "the litert runtime")
    kw = (
        {}
        if delegate == "xnnpack"
        else {"experimental_op_resolver_type": mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    )
    with native_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
        return mod.Interpreter(model_path=path, num_threads=threads, **kw)


def resizable(path: str, threads: int, delegate: str, batch: int = 2) -> bool:
    """Whether the model prepares at ``batch`` images (False when its graph holds the export's batch)."""
    it = open_interpreter(path, threads, delegate)
    d = it.get_input_details()[0]
    try:
        it.resize_tensor_input(d["index"], [batch, *d["shape"][1:]], strict=False)
        with native_quiet():
            it.allocate_tensors()
    except (RuntimeError, ValueError):
        return False
    return True


class _Runner:
    def __init__(self, path: Path, threads: int, delegate: str = "xnnpack"):
        self._path, self._threads, self._delegate = str(path), threads, delegate
        self._by_batch: dict[int, object] = {}
        self.fixed_batch: int | None = None  # set when the graph cannot be resized: then one call per image

    def _interp(self, batch: int):
        it = self._by_batch.get(batch)
        if it is None:
            it = open_interpreter(self._path, self._threads, self._delegate)
            d = it.get_input_details()[0]
            if int(d["shape"][0]) != batch:
                it.resize_tensor_input(d["index"], [batch, *d["shape"][1:]], strict=False)
            with native_quiet():
                it.allocate_tensors()
            self._by_batch[batch] = it
        return it

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None and len(batch) > 1:
            try:
                self._interp(len(batch))
            except (RuntimeError, ValueError):  # constant-batch reshapes: run it as it was exported
                self.fixed_batch = 1
        if self.fixed_batch and len(batch) != self.fixed_batch:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        it = self._interp(len(batch))
        d, o = it.get_input_details()[0], it.get_output_details()[0]
        x = batch
        if d["dtype"] != np.float32:
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(batch / scale + zero), info.min, info.max).astype(d["dtype"])
        it.set_tensor(d["index"], x)
        it.invoke()
        y = it.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            scale, zero = o["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, dtype=np.float32, copy=True)


@register_runtime
class LiteRtRuntime(Runtime):
    name = "litert"
    package = "ai-edge-litert"
    min_version = "1.0"
    artifact_files = ("model.tflite",)
    file_suffixes = (".tflite",)
    dynamic_batch = False
    options = {"threads": 2, "delegate": "xnnpack"}

    def load_file(self, path, options):
        options = {**self.options, **options}
        return _Runner(Path(path), int(options["threads"]), options["delegate"])

    def declared_input_shape(self, path):
        with native_quiet():
            d = interpreter_class()(model_path=str(path)).get_input_details()[0]
        sig = d.get("shape_signature", d["shape"])
        # LiteRT models here have a fixed batch of 1 that the runner resizes: treat batch as free
        return [None] + [int(v) if v > 0 else None for v in list(sig)[1:]]
