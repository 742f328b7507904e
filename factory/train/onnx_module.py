"""A torch module from an ONNX graph (onnx2torch), for what needs one: the LiteRT route of a model
imported as ONNX or TorchScript (litert-torch converts torch programs), and its PyTorch reference.

onnx2torch turns every node into a module; the shape nodes of a graph at a fixed H/W (Shape ->
Gather -> Concat -> Reshape, common in exporters' flatten heads) would stay dynamic and torch.export
would trace them into symbolic guards. They are folded first (onnxscript's optimizer at a fixed
batch of 1 is exactly what the graph computes at that size), and the batch is freed again afterwards.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ExportError

__all__ = ["torch_from_onnx"]


def torch_from_onnx(path: Path):
    """The torch module that computes the ONNX graph at ``path`` (eval mode)."""
    import onnx

    from .._deps import require

    onnx2torch = require("onnx2torch", "onnx2torch", "litert", "the LiteRT route of an imported ONNX model")
    model = onnx.load(str(path))
    try:
        module = onnx2torch.convert(model)
    except NotImplementedError as exc:  # onnx2torch's "Converter is not implemented (OperationDescription(...))"
        text = str(exc)
        op = text.split("operation_type=")[1].split(",")[0] if "operation_type=" in text else None
        raise ExportError(
            "onnx2torch",
            f"onnx2torch has no converter for {op or text[:200]}",
            operator=op,
            hint="this graph has no LiteRT route here; build cpu and openvino, which take the ONNX graph directly",
        ) from None
    return module.eval()
