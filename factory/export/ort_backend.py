"""ONNX Runtime backend: the canonical ONNX graph, quantized and graph-optimized for CPU."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..device.runtimes.ort_runtime import session
from ..errors import ExportError
from .base import Backend, Capabilities, register_backend, require

__all__ = ["OnnxRuntimeBackend"]

MODEL = "model.onnx"
SAVED_LEVEL = "extended"  # portable: what the bundle's file holds


_LAYERS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
# ops a tensor passes through unchanged in kind between two layers (QDQ quantizes them, or removes them)
_PASS_THROUGH = (
    "Relu",
    "Clip",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Sigmoid",
    "Div",
    "Mul",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Pad",
)


def _preprocessed(q, artifact: Path) -> Path:
    """quant_pre_process of the fp32 export, once per export (a repair quantizes it many times)."""
    pre = artifact.parent / f"{artifact.stem}.pre.onnx"
    if not pre.is_file():
        tmp = pre.with_suffix(".partial.onnx")
        q.quant_pre_process(str(artifact), str(tmp))
        tmp.replace(pre)
    return pre


def float_scope(model_path: Path, layers: list[str]) -> list[str]:
    """The nodes to exclude so that each named layer runs in float *and reads a float input*.

    ONNX Runtime's QDQ quantizes a tensor when any node that writes or reads it is quantized, so
    excluding the layer alone leaves its input quantized. The scope walks back from each layer's
    data input through pass-through ops to the layer (or other op) that produced it and excludes all
    of them; an unknown layer name is an error (onnxruntime would silently ignore it)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    by_name = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    unknown = sorted(set(layers) - set(by_name))
    if unknown:
        raise ExportError(
            "onnxruntime-quantize",
            f"keep_float names {unknown} are not nodes of the model",
            hint="use the names a repair recorded (recipe.quantization_applied.repair) or `onnx` node names",
        )
    scope: list[str] = []
    for name in layers:
        scope.append(name)
        node = by_name[name]
        while True:  # the data input: the first one another node computes (weights are initializers)
            source = next(
                (producer[i] for i in node.input if i in producer and producer[i].op_type != "Constant"), None
            )
            if source is None:
                break
            node = source
            scope.append(node.name)
            if node.op_type not in _PASS_THROUGH:
                break
    return sorted(set(scope))


class _Reader:
    """onnxruntime CalibrationDataReader over a preprocessed calibration tensor, one image at a time."""

    def __init__(self, calibration, name: str = "input"):
        self._rows = iter([{name: calibration[i : i + 1]} for i in range(len(calibration))])

    def get_next(self):
        return next(self._rows, None)


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8-static", "int8-dynamic"),
        parity_tolerance={"fp32": 1e-4, "fp16": 5e-2, "int8-static": None, "int8-dynamic": None},
        notes={
            "fp16": "fp16 weights and compute inside, fp32 input/output; halves the size, no CPU speedup expected",
            "int8-static": (
                "QDQ per-channel; uint8 activations with reduce_range by default (portable: U8S8 saturates "
                "without it on CPUs without VNNI; int8 activations ran 3.4x slower on a VNNI host)"
            ),
            "int8-dynamic": "weights int8, activations quantized per call (ConvInteger); usually slow for CNNs on CPU",
        },
    )

    def export(self, work, *, onnx_path, module_factory, input_hw):
        out = work / "fp32.onnx"
        shutil.copyfile(onnx_path, out)
        return out

    def quantize(self, artifact, work, *, precision, calibration, options, module_factory, input_hw):
        if precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            out = work / "fp16.onnx"
            onnx.save_model(convert_float_to_float16(onnx.load(str(artifact)), keep_io_types=True), str(out))
            return out, {"method": "onnxruntime.transformers.float16 (keep_io_types)"}
        q = require("onnxruntime.quantization", "onnxruntime", "onnxruntime", "ONNX Runtime quantization")
        pre = _preprocessed(q, artifact)
        if precision == "int8-dynamic":
            out = work / "int8-dynamic.onnx"
            q.quantize_dynamic(str(pre), str(out), weight_type=q.QuantType.QUInt8)
            return out, {"method": "quantize_dynamic", "weight_type": "uint8"}
        # auto: uint8 activations with reduce_range (7-bit weights) on every host. The artifact goes to devices
        # whose CPU the build host cannot know: U8S8 saturates on x86 without VNNI unless reduce_range is set,
        # and S8S8 (int8 activations) ran 3.4x slower than U8S8 on an AVX-512 VNNI host (3.2 vs 0.95 ms).
        act = "uint8" if options["activation_type"] == "auto" else options["activation_type"]
        method = {
            "minmax": q.CalibrationMethod.MinMax,
            "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile,
        }[options["method"]]
        out = work / "int8-static.onnx"
        keep = list(options.get("keep_float") or [])
        excluded = float_scope(pre, keep) if keep else []
        # ranges are cached per (fp32 model, calibration tensor, method): a repair re-quantizes many times
        digest = hashlib.sha256(calibration.tobytes()).hexdigest()[:16]
        cache = artifact.parent / f"calibration-{options['method']}-{digest}.json"
        q.quantize_static(
            str(pre),
            str(out),
            _Reader(calibration),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=act == "uint8",
            activation_type=q.QuantType.QUInt8 if act == "uint8" else q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=excluded,
            calibration_cache_path=str(cache),
        )
        return out, {
            "method": "quantize_static QDQ per-channel",
            "calibration_method": options["method"],
            "activation_type": act,
            "weight_type": "int8",
            "reduce_range": act == "uint8",
        } | ({"nodes_excluded": excluded} if excluded else {})

    def cheap_fixes(self, precision, options):
        """Other range estimators, then four times the calibration images."""
        fixes = [
            (f"calibration method {m} instead of {options['method']}", {"method": m})
            for m in ("percentile", "entropy")
            if m != options["method"]
        ]
        return fixes + [
            (
                f"{4 * options['calibration_images']} calibration images instead of {options['calibration_images']}",
                {"calibration_images": 4 * options["calibration_images"]},
            )
        ]

    def quantizable_layers(self, fp32):
        """Conv, Gemm and MatMul nodes of the graph (their ONNX node names), in graph order."""
        import onnx

        return [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in _LAYERS]

    def compile(self, artifact, out, runtime, precision):
        import onnx

        # The artifact is saved at the portable `extended` level; the runtime option (default `all`: NCHWc
        # layouts for this CPU's vector width) is applied online when a device loads it, never saved, since
        # an `all`-optimized graph is tied to the CPU that optimized it. Loading it here checks the level.
        target = out / MODEL
        session(artifact, runtime["threads"], SAVED_LEVEL, save_to=target)
        if not target.is_file():
            raise ExportError("ort-compile", "ONNX Runtime did not write the optimized model")
        session(target, runtime["threads"], runtime["graph_optimization"])
        return {
            "graph_optimization_saved": SAVED_LEVEL,
            "graph_optimization_at_load": runtime["graph_optimization"],
            "nodes_before": len(onnx.load(str(artifact)).graph.node),
            "nodes_after": len(onnx.load(str(target)).graph.node),
        }
