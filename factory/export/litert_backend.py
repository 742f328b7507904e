"""LiteRT (TFLite) backend: litert-torch conversion, ai-edge-quantizer or PT2E int8, XNNPACK check.

litert-torch cannot export a dynamic batch for torchvision classifiers (the flatten before the head
fails to lower), so the artifact has batch 1; the runtime's runner resizes it for larger batches.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np

from .._quiet import native_quiet
from ..device.runtimes.litert_runtime import (
    constant_batch_reshapes,
    interpreter_class,
    open_interpreter,
    resizable,
    xnnpack_partitions,
)
from ..errors import ExportError
from .base import Backend, Capabilities, operator_in, register_backend, require

__all__ = ["LiteRtBackend"]

MODEL = "model.tflite"


_LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL")
# ops a tensor passes through between two layers (int8 in a full-int8 model, so part of a float scope)
_PASS_THROUGH = (
    "RELU",
    "RELU6",
    "HARD_SWISH",
    "LOGISTIC",
    "MUL",
    "DIV",
    "PAD",
    "MEAN",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "RESHAPE",
    "TRANSPOSE",
    "SQUEEZE",
    "QUANTIZE",
    "DEQUANTIZE",
)
_STATS: dict[tuple[str, str], object] = {}  # (fp32 model, calibration digest) -> ai-edge-quantizer statistics


def _ops(path: Path) -> tuple[list[dict], dict[int, str]]:
    with native_quiet():
        it = interpreter_class()(model_path=str(path))
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    return list(it._get_ops_details()), names


def _op_name(op: dict, names: dict[int, str]) -> str:
    return names[op["outputs"][0]]


def float_scope(path: Path, layers: list[str]) -> list[str]:
    """The ops (by first output tensor name) to leave unquantized so that each named layer runs in float
    *and reads a float input*: in a full-int8 model a float op between int8 ones still reads a dequantized
    int8 tensor, so the scope walks back through pass-through ops to the op that produced the input."""
    ops, names = _ops(path)
    by_name = {_op_name(o, names): o for o in ops if o["outputs"]}
    producer = {t: o for o in ops for t in o["outputs"]}
    unknown = sorted(set(layers) - set(by_name))
    if unknown:
        raise ExportError("litert-quantize", f"keep_float names {unknown} are not ops of the model")
    scope = []
    for name in layers:
        scope.append(name)
        op = by_name[name]
        while True:  # the data input: the first one another op computes (weights are constant tensors)
            source = next(
                (producer[i] for i in (op["inputs"] if op["inputs"] is not None else []) if i in producer), None
            )
            if source is None:
                break
            op = source
            scope.append(_op_name(op, names))
            if op["op_name"] not in _PASS_THROUGH:
                break
    return sorted(set(scope))


def _aeq(artifact: Path, out: Path, precision: str, calibration: np.ndarray, keep: list[str] | None = None) -> dict:
    q = require("ai_edge_quantizer", "ai-edge-quantizer", "litert", "LiteRT quantization")
    from ai_edge_quantizer import recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    if precision == "fp16":
        qt = q.quantizer.Quantizer(str(artifact))
        qt.add_weight_only_config(
            regex=".*",
            operation_name=TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        qt.quantize().export_model(str(out), overwrite=True)
        return {"method": "ai-edge-quantizer float casting", "weights": "fp16"}
    name = {
        "int8-static": "static_wi8_ai8",
        "int8-dynamic": "dynamic_wi8_afp32",
        "int8-weight-only": "weight_only_wi8_afp32",
    }[precision]
    qt = q.quantizer.Quantizer(str(artifact), getattr(recipe, name)())
    scope = float_scope(artifact, keep) if keep else []
    for op in scope:  # later recipe entries win: the op keeps its float kernel
        qt.update_quantization_recipe(
            regex="^" + re.escape(op) + ";",
            operation_name=TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )
    if precision == "int8-static":
        digest = hashlib.sha256(calibration.tobytes()).hexdigest()[:16]
        model = hashlib.sha256(Path(artifact).read_bytes()).hexdigest()[:16]
        stats = _STATS.get((model, digest))
        if stats is None:
            it = interpreter_class()(model_path=str(artifact))
            sig = it.get_signature_list()
            key = next(iter(sig))
            arg = sig[key]["inputs"][0]
            rows = [{arg: calibration[i : i + 1]} for i in range(len(calibration))]
            stats = qt.calibrate({key: rows}, num_threads=2)
            _STATS.clear()  # one model's statistics at a time: a repair re-quantizes the same model
            _STATS[(model, digest)] = stats
        qt.quantize(stats).export_model(str(out), overwrite=True)
    else:
        qt.quantize().export_model(str(out), overwrite=True)
    return {"method": "ai-edge-quantizer", "recipe": name} | ({"ops_kept_float": scope} if scope else {})


def _check_loads(quantized: Path, fp32: Path) -> None:
    """ai-edge-quantizer can write a model LiteRT refuses ("Tensor 5 has invalid quantization parameters"):
    name the ops behind those tensors (looked up in the fp32 model, whose tensor order the quantizer keeps)
    so the error says which layers to keep in float."""
    try:
        with native_quiet():
            interpreter_class()(model_path=str(quantized))
        return
    except (RuntimeError, ValueError) as exc:
        text = str(exc)
    bad = sorted({int(i) for i in re.findall(r"Tensor (\d+) has invalid quantization", text)})
    ops, names = _ops(fp32)
    users = [o for o in ops if any(i in bad for i in (o["inputs"] if o["inputs"] is not None else []))]
    kinds = sorted({o["op_name"] for o in users})
    first = text.split("Tensor")[0].strip().rstrip(".")[:200]
    raise ExportError(
        "litert-quantize",
        f"ai-edge-quantizer wrote a model LiteRT cannot load ({first}) for {len(bad)} tensors"
        + (
            f" read by {len(users)} {'/'.join(kinds)} ops ({', '.join(_op_name(o, names) for o in users[:3])}...)"
            if users
            else ""
        ),
        operator="/".join(kinds) or None,
        hint="keep those ops in float (quantization.keep_float) or quantize with engine: pt2e",
    )


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
        precisions=("fp32", "fp16", "int8-static", "int8-dynamic", "int8-weight-only"),
        parity_tolerance={
            "fp32": 1e-4,
            "fp16": 5e-2,
            "int8-static": None,
            "int8-dynamic": None,
            "int8-weight-only": None,
        },
        notes={
            "fp16": "fp16 weights (float casting), fp32 compute on CPU",
            "int8-static": (
                "full int8 with int8 input/output (ai-edge-quantizer static_wi8_ai8, or PT2E with engine: pt2e)"
            ),
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
            raise ExportError(
                "litert-convert", text.splitlines()[0][:500], operator=operator_in(text + log.text)
            ) from exc
        return out

    def quantize(self, artifact, work, *, precision, calibration, options, module_factory, input_hw):
        out = work / f"{precision}.tflite"
        engine = options["engine"]
        if engine == "pt2e" and options.get("keep_float"):
            raise ExportError(
                "litert-quantize",
                "the pt2e engine cannot keep layers in float",
                hint="use quantization.engine: ai-edge-quantizer (or auto) for a repair or keep_float",
            )
        with native_quiet():
            if precision == "int8-static" and engine == "pt2e":
                facts = _pt2e(module_factory(), out, calibration, input_hw)
            else:
                facts = _aeq(artifact, out, precision, calibration, list(options.get("keep_float") or []))
        _check_loads(out, artifact)
        return out, facts

    def cheap_fixes(self, precision, options):
        """Four times the calibration images (ai-edge-quantizer's static recipe is per-channel min-max already),
        then the other quantizer, litert-torch's PT2E (measured on regnet_x_400mf: ai-edge-quantizer +0.73 pt
        [+0.37, +1.13] on the test split whatever was kept in float, PT2E +0.19 [-0.07, +0.47]). PT2E
        cannot keep layers in float, so the float stage of a repair goes on with ai-edge-quantizer."""
        n = options["calibration_images"]
        fixes = [(f"{4 * n} calibration images instead of {n}", {"calibration_images": 4 * n})]
        if precision == "int8-static" and options.get("engine") != "pt2e" and not options.get("keep_float"):
            fixes.append(("litert-torch PT2E instead of ai-edge-quantizer", {"engine": "pt2e"}))
        return fixes

    def keep_float_options(self, options):
        """PT2E cannot keep layers in float: the float stage uses ai-edge-quantizer."""
        return {**options, "engine": "ai-edge-quantizer"} if options.get("engine") == "pt2e" else options

    def quantizable_layers(self, fp32):
        """Convolution and fully connected ops of the fp32 model, by their first output tensor's name."""
        ops, names = _ops(fp32)
        return [_op_name(o, names) for o in ops if o["op_name"] in _LAYER_OPS and o["outputs"]]

    def compile(self, artifact, out, runtime, precision):
        shutil.copyfile(artifact, out / MODEL)
        delegate = runtime.get("delegate", "xnnpack")
        fallback = "set runtime.delegate: none in the target profile to run it on LiteRT's built-in kernels (slower)"
        log = None
        try:
            it = open_interpreter(str(out / MODEL), int(runtime["threads"]), delegate)
            with native_quiet() as log:
                it.allocate_tensors()
        except Exception as exc:
            text = str(exc) or type(exc).__name__
            what = "the XNNPACK delegate cannot prepare" if delegate == "xnnpack" else "LiteRT cannot load"
            raise ExportError(
                "litert-load",
                f"{what} this model: {text.splitlines()[0][:400]}",
                operator=operator_in(text + (log.text if log else "")),
                hint=fallback if delegate == "xnnpack" else None,
            ) from exc
        d, o = it.get_input_details()[0], it.get_output_details()[0]
        parts = xnnpack_partitions(it)
        if delegate == "xnnpack" and parts == 0:
            raise ExportError("litert-load", "the XNNPACK delegate took no part of the graph", hint=fallback)
        facts = {
            "delegate": "XNNPACK" if delegate == "xnnpack" else "none (built-in kernels, chosen in the profile)",
            "xnnpack_partitions": parts,
            "input_dtype": np.dtype(d["dtype"]).name,
            "output_dtype": np.dtype(o["dtype"]).name,
            "fixed_batch": int(d["shape"][0]),
        }
        if not resizable(str(out / MODEL), int(runtime["threads"]), delegate):
            reshapes = constant_batch_reshapes(it)
            facts["batch_resizable"] = False
            facts["why_not_resizable"] = (
                f"{len(reshapes)} RESHAPE ops hold the export's batch of 1 in their target shape"
                + (f" ({', '.join(reshapes[:3])}{'...' if len(reshapes) > 3 else ''})" if reshapes else "")
                + "; the runner runs it one image at a time"
            )
        return facts
