"""Models the factory did not make: an ONNX classifier written node by node with ``onnx.helper``.

``hand_built_onnx`` transcribes a trained ``tiny-cnn``'s weights into a graph no torch exporter wrote:
opset 11, input BGR normalised with mean 0.5 / std 0.5 (the affine and the channel swap are nodes of
the graph, so zero padding stays exact), dynamic batch, height and width, BatchNorm folded into the
convolutions, and a Softmax at the end, as Keras- and Caffe-era exports look.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def hand_built_onnx(
    weights: Path,
    out: Path,
    *,
    nhwc: bool = False,
    reshape_batch: bool = False,
    extra_output: bool = False,
    opset: int = 11,
    fixed_hw: tuple[int, int] | None = None,
) -> Path:
    """Write the graph of a trained tiny-cnn (``weights.pt``) to ``out``; see the module docstring."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    sd = {k: v.numpy().astype(np.float32) for k, v in torch.load(weights, weights_only=True).items()}
    inits, nodes = [], []

    def const(name, value):
        inits.append(
            numpy_helper.from_array(np.asarray(value, np.float32 if value.dtype != np.int64 else np.int64), name)
        )
        return name

    # z = (bgr/255 - 0.5) / 0.5  ->  the trained model's x_rgb = (rgb/255 - mean) / std, kept in BGR order
    bgr_mean, bgr_std = IMAGENET_MEAN[::-1], IMAGENET_STD[::-1]
    a = (0.5 / bgr_std).reshape(1, 3, 1, 1)
    b = ((0.5 - bgr_mean) / bgr_std).reshape(1, 3, 1, 1)
    x = "image"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes.append(helper.make_node("Mul", [x, const("a", a)], ["scaled"]))
    nodes.append(helper.make_node("Add", ["scaled", const("b", b)], ["x0"]))
    x = "x0"
    for i in range(4):
        w = sd[f"{i}.0.weight"]
        if i == 0:
            w = w[:, ::-1].copy()  # the graph's channels are B, G, R
        g, beta, mu, var = (sd[f"{i}.1.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        k = g / np.sqrt(var + 1e-5)
        wf, bf = w * k[:, None, None, None], beta - mu * k
        conv, relu = f"conv{i}", f"relu{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(f"w{i}", wf), const(f"b{i}", bf)],
                [conv],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [conv], [relu]))
        x = relu
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    if reshape_batch:  # as old exporters wrote a flatten: the batch pinned at 1
        nodes.append(
            helper.make_node("Reshape", ["pooled", const("flat_shape", np.array([1, -1], np.int64))], ["flat"])
        )
    else:
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    nodes.append(
        helper.make_node(
            "Gemm", ["flat", const("fc_w", sd["6.weight"]), const("fc_b", sd["6.bias"])], ["scores"], transB=1
        )
    )
    nodes.append(helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1))
    h, w = fixed_hw or ("H", "W")
    shape = ["N", h, w, 3] if nhwc else ["N", 3, h, w]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", sd["6.bias"].shape[0]])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 96, 1, 1]))
    graph = helper.make_graph(
        nodes, "hand_built", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx.helper")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out))
    return out
