"""LiteRT (TFLite) backend: litert-torch conversion, ai-edge-quantizer or PT2E int8, XNNPACK check.

litert-torch cannot export a dynamic batch for torchvision classifiers (the flatten before the head
fails to lower), so the artifact has batch 1 and the runner resizes its input for larger batches.
Static int8 models have int8 input/output tensors; the runner quantizes and dequantizes with the
scales stored in the model, so callers always pass and receive float32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .._quiet import native_quiet
from ..errors import ExportError
from .base import Backend, Capabilities, register_backend, require

__all__ = ["LiteRtBackend", "xnnpack_partitions"]

MODEL = "model.tflite"


def _interpreter_cls():
    return require("ai_edge_litert.interpreter", "ai-edge-litert", "litert", "the litert backend").Interpreter


def xnnpack_partitions(interpreter) -> int:
    """How many subgraphs the XNNPACK delegate took over (0 means it ran on the slow reference kernels)."""
    return sum(1 for op in interpreter._get_ops_details() if op.get("op_name") == "DELEGATE")


def _operator_from(text: str) -> str | None:
    for token in text.replace("(", " ").replace(")", " ").split():
        if token.startswith(("aten.", "aten::", "torch.ops.")):
            return token.strip("'\"`,.:")
    return None


class _Runner:
    def __init__(self, path: Path, threads: int):
        self._path, self._threads = str(path), threads
        self._by_batch: dict[int, object] = {}

    def _interp(self, batch: int):
        it = self._by_batch.get(batch)
        if it is None:
            with native_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
                it = _interpreter_cls()(model_path=self._path, num_threads=self._threads)
            d = it.get_input_details()[0]
            if int(d["shape"][0]) != batch:
                it.resize_tensor_input(d["index"], [batch, *d["shape"][1:]], strict=False)
            it.allocate_tensors()
            self._by_batch[batch] = it
        return it

    def __call__(self, batch: np.ndarray) -> np.ndarray:
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


def _aeq(artifact: Path, out: Path, precision: str, calibration: np.ndarray) -> dict:
    q = require("ai_edge_quantizer", "ai-edge-quantizer", "litert", "LiteRT quantization")
    from ai_edge_quantizer import recipe

    if precision == "fp16":
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.qtyping import TFLOperationName

        qt = q.quantizer.Quantizer(str(artifact))
        qt.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
        qt.quantize().export_model(str(out), overwrite=True)
        return {"method": "ai-edge-quantizer float casting", "weights": "fp16"}
    name = {"int8-static": "static_wi8_ai8", "int8-dynamic": "dynamic_wi8_afp32", "int8-weight-only": "weight_only_wi8_afp32"}[precision]
    qt = q.quantizer.Quantizer(str(artifact), getattr(recipe, name)())
    if precision == "int8-static":
        it = _interpreter_cls()(model_path=str(artifact))
        sig = it.get_signature_list()
        key = next(iter(sig))
        arg = sig[key]["inputs"][0]
        stats = qt.calibrate({key: [{arg: calibration[i : i + 1]} for i in range(len(calibration))]}, num_threads=2)
        qt.quantize(stats).export_model(str(out), overwrite=True)
    else:
        qt.quantize().export_model(str(out), overwrite=True)
    return {"method": "ai-edge-quantizer", "recipe": name}


def _pt2e(module, out: Path, calibration: np.ndarray, input_hw: tuple[int, int]) -> dict:
    import torch

    litert_torch = require("litert_torch", "litert-torch", "litert", "LiteRT conversion")
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    sample = (torch.zeros(1, 3, *input_hw),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = prepare_pt2e(torch.export.export(module.eval(), sample).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):
            graph(torch.from_numpy(calibration[i : i + 1]))
    graph = convert_pt2e(graph, fold_quantize=False)
    move_exported_model_to_eval(graph)
    litert_torch.convert(graph, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    return {"method": "litert-torch PT2E", "config": "symmetric per-channel static"}


@register_backend
class LiteRtBackend(Backend):
    name = "litert"
    capabilities = Capabilities(
        runtime_package="ai-edge-litert",
        min_runtime_version="1.0",
        artifact_files=(MODEL,),
        file_suffixes=(".tflite",),
        precisions=("fp32", "fp16", "int8-static", "int8-dynamic", "int8-weight-only"),
        dynamic_batch=False,
        parity_tolerance={"fp32": 1e-4, "fp16": 5e-2, "int8-static": None, "int8-dynamic": None, "int8-weight-only": None},
        runtime_options={"threads": 2},
        notes={
            "fp16": "fp16 weights (float casting), fp32 compute on CPU",
            "int8-static": "full int8 with int8 input/output (ai-edge-quantizer static_wi8_ai8, or PT2E with engine: pt2e)",
            "int8-dynamic": "int8 weights, activations quantized per call (dynamic range)",
            "int8-weight-only": "int8 weights dequantized to fp32 at load",
        },
    )

    def export(self, work, *, onnx_path, module_factory, input_hw):
        import torch

        out = work / "fp32.tflite"
        try:
            with native_quiet() as log:  # torch/absl/TFLite converter logs go to the native fds
                litert_torch = require("litert_torch", "litert-torch", "litert", "LiteRT conversion")
                litert_torch.convert(module_factory().eval(), (torch.zeros(1, 3, *input_hw),)).export(str(out))
        except Exception as exc:
            text = str(exc) or type(exc).__name__
            raise ExportError("litert-convert", text.splitlines()[0][:500], operator=_operator_from(text + log.text)) from exc
        return out

    def quantize(self, artifact, work, *, precision, calibration, options, module_factory, input_hw):
        out = work / f"{precision}.tflite"
        engine = options["engine"]
        with native_quiet():
            if precision == "int8-static" and engine == "pt2e":
                facts = _pt2e(module_factory(), out, calibration, input_hw)
            else:
                facts = _aeq(artifact, out, precision, calibration)
        return out, facts

    def compile(self, artifact, out, runtime, precision):
        shutil.copyfile(artifact, out / MODEL)
        try:
            with native_quiet():
                it = _interpreter_cls()(model_path=str(out / MODEL), num_threads=int(runtime["threads"]))
                it.allocate_tensors()
        except Exception as exc:
            raise ExportError("litert-load", f"the model does not load in LiteRT: {exc}") from exc
        d, o = it.get_input_details()[0], it.get_output_details()[0]
        parts = xnnpack_partitions(it)
        if parts == 0:
            raise ExportError("litert-load", "the XNNPACK delegate took no part of the graph; it would run on reference kernels")
        return {
            "delegate": "XNNPACK",
            "xnnpack_partitions": parts,
            "input_dtype": np.dtype(d["dtype"]).name,
            "output_dtype": np.dtype(o["dtype"]).name,
            "fixed_batch": int(d["shape"][0]),
        }

    def runner_for_file(self, path, runtime):
        runtime = {**self.capabilities.runtime_options, **runtime}
        return _Runner(Path(path), int(runtime["threads"]))

    def declared_input_shape(self, path):
        with native_quiet():
            d = _interpreter_cls()(model_path=str(path)).get_input_details()[0]
        sig = d.get("shape_signature", d["shape"])
        # LiteRT models here have a fixed batch of 1 that the runner resizes: treat batch as free
        return [None] + [int(v) if v > 0 else None for v in list(sig)[1:]]
