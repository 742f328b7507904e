"""An ONNX graph from another framework, made into the factory's canonical graph.

The canonical graph has one float input ``input`` NCHW ``[batch, 3, H, W]`` (dynamic batch, fixed H and
W) and one output of raw scores ``[batch, C]``. :func:`conform` gets there from what exporters write:
NHWC inputs (a Transpose is put in front), dynamic or symbolic H/W (fixed at the size given), a batch
axis that a Reshape pins to 1 (freed), several outputs (the one named is kept), a trailing Softmax
(removed: the factory calibrates, compares and thresholds raw scores) or probabilities computed
otherwise (a Log is appended, so softmax of the output gives the probabilities back), a ``[N, C, 1, 1]``
head (flattened), opsets 11 and 12 (converted to 13, the lowest that every quantizer here takes) and
unnamed nodes (named, since the int8 repair keeps layers in float by node name).
Every refusal is a :class:`ModelError` or :class:`InputError` that says what to pass instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError

__all__ = ["MIN_OPSET", "load_onnx", "opset_of", "input_dims", "conform", "onnx_macs", "run_onnx"]

MIN_OPSET = 11
QUANT_OPSET = 13  # onnxruntime.quantization needs 13 or newer (per-axis QuantizeLinear)


def load_onnx(path: Path):
    """The ModelProto at ``path``, checked; a file that is not an ONNX model is a ModelError."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, and others for truncated files
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node or not model.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no graph nodes)", hint="name an .onnx, .pt2, .pt or .pth file")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        raise ModelError(f"{path}: the ONNX checker refuses the graph: {str(exc).splitlines()[0][:300]}") from None
    if opset_of(model) < MIN_OPSET:
        raise ModelError(
            f"{path}: opset {opset_of(model)}; the factory takes opset {MIN_OPSET} and newer",
            hint="re-export with a newer opset (e.g. torch.onnx.export(..., opset_version=17))",
        )
    return model


def opset_of(model) -> int:
    """The default-domain opset the model imports."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _dims(value_info) -> list:
    """A value's dims: ints where fixed, the symbol (or None) where not."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim
    ]


def input_dims(model) -> list:
    """The dims of the graph's one image input (ints where fixed, symbols or None where not)."""
    return _dims(_graph_input(model))


def _graph_input(model):
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(
            f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image model takes one"
        )
    if inputs[0].type.tensor_type.elem_type != 1:  # FLOAT
        raise ModelError(
            f"the graph's input {inputs[0].name!r} is not float32",
            hint="the factory feeds float32 after preprocessing; export a float model (quantize in the factory)",
        )
    return inputs[0]


def _check_input(dims: list, layout: str, size: tuple[int, int]) -> None:
    """The preprocessing the user named against what the graph declares."""
    if len(dims) != 4:
        raise InputError(f"the graph's input has rank {len(dims)} ({dims}); an image model takes 4 (batch, 3, H, W)")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if layout == "NHWC" and dims[1] == 3 and dims[3] != 3:
        raise InputError(f"the graph's input {dims} is NCHW (3 channels on axis 1)", hint="pass --layout NCHW")
    if isinstance(c, int) and c != 3:
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise InputError(
            f"the graph's input {dims} has {c} channels in {layout} layout, not 3",
            hint=f"is the graph {other}? pass --layout {other}",
        )
    for axis, want, got in (("height", size[0], h), ("width", size[1], w)):
        if isinstance(got, int) and got != want:
            raise InputError(
                f"the graph's input is fixed at {axis} {got}, not the {want} of --size {size[0]}x{size[1]}",
                hint=f"pass the size the graph takes (its input is {dims})",
            )


def _rename_value(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for out in graph.output:
        if out.name == old:
            out.name = new


def _set_input(model, layout: str, size: tuple[int, int]) -> None:
    """Input ``input`` NCHW [batch, 3, H, W]; an NHWC graph gets a Transpose in front."""
    from onnx import TensorProto, helper

    graph = model.graph
    inp = _graph_input(model)
    old = inp.name
    graph.input.remove(inp)
    graph.input.insert(0, helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, *size]))
    if layout == "NHWC":
        graph.node.insert(0, helper.make_node("Transpose", ["input"], [old], name="factory_nhwc", perm=[0, 2, 3, 1]))
    elif old != "input":
        _rename_value(graph, old, "input")


def _producer(graph, name: str):
    return next((n for n in graph.node if name in n.output), None)


def _pick_output(model, output: str | None) -> str:
    names = [o.name for o in model.graph.output]
    if output is None:
        if len(names) > 1:
            raise InputError(
                f"the graph has {len(names)} outputs ({', '.join(names)})", hint="choose one with --output"
            )
        return names[0]
    if output not in names:
        raise InputError(f"the graph has no output {output!r}; it has {', '.join(names)}")
    keep = [o for o in model.graph.output if o.name == output]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return output


def _set_output(model, name: str) -> None:
    """Make ``name`` the graph's one output."""
    from onnx import TensorProto, helper

    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def _prune_unused(graph) -> int:
    """Drop nodes whose outputs reach no graph output (what a removed Softmax or output leaves behind)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    dropped = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return dropped


def _free_batch(graph) -> int:
    """A Reshape to a constant shape whose first dimension is 1 pins the batch: 0 copies it instead."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    freed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        tensor = inits.get(node.input[1])
        if tensor is None and node.input[1] in consts:
            tensor = next((a.t for a in consts[node.input[1]].attribute if a.name == "value"), None)
        if tensor is None:
            continue
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and len(shape) >= 2 and shape[0] == 1:
            shape = shape.copy()
            shape[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), tensor.name))
            freed += 1
    return freed


def run_onnx(model, x: np.ndarray) -> np.ndarray:
    """The model's first output on ``x`` (ONNX Runtime, CPU); a runtime refusal is a ModelError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException
        raise ModelError(f"ONNX Runtime cannot run the graph: {str(exc).splitlines()[0][:300]}") from None


def _are_probabilities(y: np.ndarray) -> bool:
    y = y.reshape(len(y), -1)
    return bool((y >= -1e-6).all() and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def conform(
    model,
    *,
    size: tuple[int, int],
    layout: str = "NCHW",
    output: str | None = None,
    outputs_are: str = "auto",
    probe: np.ndarray | None = None,
):
    """The canonical graph of a foreign ONNX model; returns ``(model, facts)``. ``probe``: a preprocessed
    batch (at least 2 images) used to tell probabilities from scores and to check the batch is free."""
    import onnx
    from onnx import helper, version_converter

    facts: dict = {"source_opset": opset_of(model), "layout": layout}
    graph = model.graph
    inp = _graph_input(model)
    _check_input(_dims(inp), layout, size)
    facts["source_input"] = {"name": inp.name, "shape": _dims(inp)}
    name = _pick_output(model, output)
    facts["source_output"] = name
    _set_input(model, layout, size)
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type.lower()}_{i}"
    # the output: raw scores, not probabilities
    node = _producer(graph, name)
    removed = None
    if node is not None and node.op_type in ("Softmax", "LogSoftmax") and outputs_are != "logits":
        removed = node.op_type
        name = node.input[0]
        _set_output(model, name)
        facts["removed"] = f"trailing {node.op_type} ({node.name}): outputs are its input, the raw scores"
    facts["dropped_nodes"] = _prune_unused(graph)
    if _free_batch(graph):
        facts["freed_batch"] = "a Reshape pinned the batch at 1; it copies the batch now"
    if opset_of(model) < QUANT_OPSET:
        try:
            model = version_converter.convert_version(model, QUANT_OPSET)
        except Exception as exc:  # the converter raises RuntimeError/ValidationError for unsupported adapters
            raise ModelError(
                f"cannot convert the graph from opset {facts['source_opset']} to {QUANT_OPSET}: {exc}"
            ) from None
        graph = model.graph
        facts["converted_to_opset"] = QUANT_OPSET
    if probe is not None:
        y = run_onnx(model, probe)
        if len(y) != len(probe):
            raise ModelError(
                f"the graph returns a batch of {len(y)} for {len(probe)} images: its batch axis is fixed",
                hint="re-export it with a dynamic batch axis (torch.onnx.export(..., dynamic_shapes=...))",
            )
        if y.ndim == 4 and y.shape[2:] == (1, 1):
            graph.node.append(helper.make_node("Flatten", [name], ["logits"], name="factory_flatten", axis=1))
            name = "logits"
            _set_output(model, name)
            facts["flattened"] = "[N, C, 1, 1] head flattened to [N, C]"
        elif y.ndim != 2:
            raise ModelError(
                f"output {facts['source_output']!r} has shape {list(y.shape)}; a classifier returns [batch, classes]",
                hint="choose the scores output with --output",
            )
        probs = outputs_are == "probabilities" or (outputs_are == "auto" and removed is None and _are_probabilities(y))
        if probs and removed is None:
            graph.node.append(helper.make_node("Log", [name], ["log_probabilities"], name="factory_log"))
            name = "log_probabilities"
            _set_output(model, name)
            facts["appended"] = (
                "Log: the graph returns probabilities; log-probabilities are scores whose softmax gives them back"
            )
    facts["outputs_are"] = "probabilities" if (removed or "appended" in facts) else "scores"
    if name != "logits":
        graph.node.append(helper.make_node("Identity", [name], ["logits"], name="factory_output"))
        _set_output(model, "logits")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - any checker failure means our rewrite broke the graph
        raise ModelError(f"the conformed graph does not check: {str(exc).splitlines()[0][:300]}") from None
    return model, facts


def onnx_macs(model, size: tuple[int, int]) -> dict:
    """Multiply-accumulates (Conv, Gemm, MatMul) and parameters of one image, from shape inference."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: _dims(v) for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    shapes["input"] = [1, 3, *size]
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0], [])
        if node.op_type == "Conv" and node.input[1] in inits and len(out) == 4:
            k = inits[node.input[1]]
            spatial = out[2] * out[3] if all(isinstance(d, int) for d in out[2:]) else 0
            macs += int(np.prod(k)) * spatial
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in inits:
            macs += int(np.prod(inits[node.input[1]]))
    params = int(sum(int(np.prod(s)) for s in inits.values()))
    return {"params": params, "macs": int(macs)}
