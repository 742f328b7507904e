"""OpenVINO backend: IR converted from the ONNX graph, NNCF for int8, compiled and checked on CPU."""

from __future__ import annotations

import re

from .._altstack import keep_altstack
from .._quiet import native_quiet
from ..device.runtimes.openvino_runtime import compile_config
from ..errors import ExportError
from .base import Backend, Capabilities, register_backend, require

__all__ = ["OpenVinoBackend"]

XML = "model.xml"


def _ov():
    return require("openvino", "openvino", "openvino", "the openvino backend")


_GENERATED = re.compile(r"^([A-Za-z]+)_\d+$")


def _stable_names(model):
    """Rename the nodes OpenVINO named itself (``Constant_37113``: a process-wide counter) after their
    place in the graph, so the same model converted twice is the same IR, byte for byte."""
    taken = {op.get_friendly_name() for op in model.get_ordered_ops()}
    for i, op in enumerate(model.get_ordered_ops()):
        m = _GENERATED.match(op.get_friendly_name())
        if m:
            name = f"{m.group(1)}_{i}"
            while name in taken:
                name += "_"
            taken.add(name)
            op.set_friendly_name(name)
    return model


_LAYER_TYPES = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


# ops between two layers: NNCF puts a quantizer on the inputs of those it quantizes (Multiply, Divide...)
_PASS_THROUGH = (
    "Relu",
    "Clamp",
    "Multiply",
    "Divide",
    "Add",
    "HSwish",
    "HSigmoid",
    "Sigmoid",
    "Swish",
    "MaxPool",
    "AvgPool",
    "ReduceMean",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Pad",
)


def float_scope(model, layers: list[str]) -> list[str]:
    """The ops to give NNCF as ignored so that each named layer runs in float *and reads a float input*:
    the layer (no quantizer on its inputs, float weights) and the pass-through ops back to the layer that
    produced its input, which would otherwise quantize that tensor on their own inputs."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    unknown = sorted(set(layers) - set(ops))
    if unknown:
        raise ExportError("openvino-quantize", f"keep_float names {unknown} are not ops of the model")
    scope = []
    for name in layers:
        scope.append(name)
        op = ops[name]
        while True:
            data = [i.get_source_output().get_node() for i in op.inputs()]
            source = next((n for n in data if n.get_type_name() not in ("Constant", "Convert", "Parameter")), None)
            if source is None or source.get_type_name() not in _PASS_THROUGH:
                break
            op = source
            scope.append(op.get_friendly_name())
    return sorted(set(scope))


def _nncf():
    return require("nncf", "nncf", "openvino", "OpenVINO int8 quantization")


@register_backend
class OpenVinoBackend(Backend):
    name = "openvino"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8-static", "int8-weight-only"),
        parity_tolerance={"fp32": 1e-4, "fp16": 5e-2, "int8-static": None, "int8-weight-only": None},
        notes={
            "fp16": (
                "fp16 weights in the IR and an f16 inference hint; CPUs without native fp16 run f32 (recorded as "
                "effective precision)"
            ),
            "int8-static": "nncf.quantize (post-training, PERFORMANCE preset, fast bias correction)",
            "int8-weight-only": "nncf.compress_weights INT8_ASYM: ~4x smaller, weights decompressed at run time",
        },
    )

    def export(self, work, *, onnx_path, module_factory, input_hw):
        ov = _ov()
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise ExportError("openvino-convert", str(exc).splitlines()[0][:500]) from exc
        out = work / "fp32.xml"
        ov.save_model(model, str(out), compress_to_fp16=False)
        return out

    def quantize(self, artifact, work, *, precision, calibration, options, module_factory, input_hw):
        ov = _ov()
        core = ov.Core()
        model = core.read_model(str(artifact))
        if precision == "fp16":
            out = work / "fp16.xml"
            ov.save_model(model, str(out), compress_to_fp16=True)
            return out, {"method": "IR weights stored as fp16 (compress_to_fp16)"}
        nncf = _nncf()
        with native_quiet(), keep_altstack():  # NNCF draws progress bars on stdout; it compiles (factory._altstack)
            if precision == "int8-weight-only":
                q = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
                facts = {"method": "nncf.compress_weights", "mode": "INT8_ASYM"}
            else:
                dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
                keep = list(options.get("keep_float") or [])
                preset, bias = options.get("preset", "performance"), options.get("bias_correction", "fast")
                q = nncf.quantize(
                    model,
                    dataset,
                    subset_size=len(calibration),
                    preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
                    fast_bias_correction=bias == "fast",
                    target_device=nncf.TargetDevice.CPU,
                    # an ignored op gets no quantizer on its inputs and keeps float weights: it reads a float input
                    ignored_scope=nncf.IgnoredScope(names=float_scope(model, keep), validate=True) if keep else None,
                )
                facts = {
                    "method": "nncf.quantize",
                    "preset": preset.upper(),
                    "bias_correction": bias,
                    "subset_size": len(calibration),
                } | ({"ignored_scope": keep} if keep else {})
        out = work / f"{precision}.xml"
        ov.save_model(q, str(out), compress_to_fp16=False)
        return out, facts

    def cheap_fixes(self, precision, options):
        """Asymmetric activations (MIXED preset), full bias correction, then four times the calibration images."""
        n = options["calibration_images"]
        fixes = []
        if options.get("preset", "performance") != "mixed":
            fixes.append(("MIXED preset (asymmetric activations) instead of PERFORMANCE", {"preset": "mixed"}))
        if options.get("bias_correction", "fast") != "full":
            fixes.append(("full bias correction instead of fast", {"bias_correction": "full"}))
        return fixes + [(f"{4 * n} calibration images instead of {n}", {"calibration_images": 4 * n})]

    def quantizable_layers(self, fp32):
        """Convolution, GroupConvolution and MatMul ops of the IR, by the names NNCF's ignored scope takes
        (a convolution with a bias is ``<onnx node>/WithoutBiases``)."""
        model = _ov().Core().read_model(str(fp32))
        return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in _LAYER_TYPES]

    def compile(self, artifact, out, runtime, precision):
        ov = _ov()
        core = ov.Core()
        fp16_weights = precision == "fp16"
        ov.save_model(_stable_names(core.read_model(str(artifact))), str(out / XML), compress_to_fp16=fp16_weights)
        try:
            with keep_altstack():  # the CPU plugin swaps this thread's signal stack (factory._altstack)
                compiled = core.compile_model(core.read_model(str(out / XML)), "CPU", compile_config(runtime))
        except Exception as exc:
            raise ExportError(
                "openvino-compile", f"the IR does not compile on CPU: {str(exc).splitlines()[0][:400]}"
            ) from exc
        return {
            "device": "CPU",
            "requested_precision": runtime["inference_precision"],
            "effective_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "weights_fp16": fp16_weights,
        }
