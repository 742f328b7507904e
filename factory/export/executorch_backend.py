"""ExecuTorch backend: ``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``.pte``.

fp32 is the exported program lowered to XNNPACK. int8-static is PT2E with the XNNPACK quantizer
(symmetric, per-channel weights, static activations), calibrated on the calibration images, then
lowered the same way; the int8 repair keeps graph nodes in float through the quantizer's node filter
(``set_filter_function``: this release refuses a module-name config of None). The export asks
``torch.export`` for a dynamic batch and keeps it when the model exports and lowers with one and the
runtime runs the program at a batch of 1 and at its largest (checked at build time); otherwise the
program has a batch of 1, and the manifest says why. Devices run the ``.pte`` with
:mod:`factory.device.runtimes.executorch_runtime`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .._quiet import native_quiet
from ..device.runtimes.executorch_runtime import MAX_BATCH_METHOD, batch_bounds, load_program
from ..errors import ExportError
from .base import Backend, Capabilities, operator_in, register_backend, require

__all__ = ["ExecuTorchBackend"]

MODEL = "model.pte"
MAX_BATCH = 64


class _NotDynamic(Exception):
    """The lowered program does not run at every batch it declares."""


class _CannotRun(Exception):
    """The ExecuTorch runtime refused to run the program; the message is the runtime's reason."""


class _Pinned(_NotDynamic):
    """The edge lowering replaced the dynamic batch torch.export gave the program by the traced size."""


# ExecuTorch 1.5's edge IR validator takes len() of the first tensor an op returning a list of tensors
# (chunk, split: shufflenet's branches) gives back, which pins a dynamic batch to the traced size. The
# program then refuses every other batch. Lowering again without that dtype check keeps the batch; the
# run check below still has to pass, and the batch-1 fallback lowers with the check on.
_UNCHECKED = "lowered without the edge IR dtype check: with it, ExecuTorch's validator pins the batch"


def _batch_dim() -> tuple:
    """torch.export's dynamic shapes for a model's one input: a batch of 1 to MAX_BATCH."""
    import torch

    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _facts(artifact) -> dict:
    """What the export recorded beside a program (partitions, layers, how its batch was decided)."""
    return json.loads(Path(artifact).with_suffix(".facts.json").read_text())


def _lower(graph, sample, dynamic: bool, check_ir: bool = True):
    """An ExecuTorch program of ``graph`` (a module or a converted PT2E graph), XNNPACK-delegated."""
    import torch

    require("executorch.exir", "executorch", "executorch", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    exported = torch.export.export(graph, sample, dynamic_shapes=_batch_dim() if dynamic else None)
    bound = {MAX_BATCH_METHOD: MAX_BATCH if dynamic else sample[0].shape[0]}  # the runner reads it back
    edge = to_edge_transform_and_lower(
        exported,
        partitioner=[XnnpackPartitioner()],
        constant_methods=bound,
        compile_config=EdgeCompileConfig(_check_ir_validity=check_ir),
    )
    program = edge.exported_program()
    if dynamic and not any(getattr(k, "free_symbols", None) for k in program.range_constraints):  # all numbers
        raise _Pinned("the edge lowering pinned the batch to the traced size")
    delegated = sum(1 for n in program.graph.nodes if n.op == "call_function" and "call_delegate" in str(n.target))
    return edge.to_executorch(), delegated


def _write(program, delegated: int, out: Path, layers: list[str], notes: dict) -> Path:
    out.write_bytes(program.buffer)
    facts = {"xnnpack_partitions": delegated, "layers": layers, **notes}
    out.with_suffix(".facts.json").write_text(json.dumps(facts))  # beside the program: cached with it
    return out


def _run_check(path: Path) -> tuple[int, bool]:
    """(the largest batch, whether the batch is dynamic) of a program the ExecuTorch runtime ran at a batch
    of 1 and at its largest; else :class:`_CannotRun` with the runtime's own log lines (a static tensor it
    was asked to resize, a missing kernel)."""
    import torch

    with native_quiet() as log:
        try:
            program, method = load_program(path)
            sizes, largest, dynamic = batch_bounds(program)
            for batch in sorted({1, largest}) if dynamic else (largest,):
                method.execute([torch.zeros(batch, *sizes[1:])])
            return largest, dynamic
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError, ValueError, ...
            failed = f"{exc}" or type(exc).__name__
    said = [line.split("] ", 1)[-1] for line in log.text.splitlines() if line.startswith("[") and "] " in line]
    said = [line for line in said if "cpuinfo" not in line]  # the CPU probe's noise, not the cause
    raise _CannotRun("; ".join([*said[:2], failed])[:400])


def _export(graph, input_hw, out: Path, layers: list[str], check_ir_first: bool = True) -> Path:
    """Lower with a dynamic batch when torch.export and XNNPACK keep one and the runtime runs it at every
    batch it declares, else at batch 1 (the facts say why). ``check_ir_first=False`` when the fp32 export
    of this model already showed that the edge IR check pins its batch: one lowering instead of two."""
    import torch

    errors: list[Exception] = []
    attempts = ((True, True), (True, False), (False, True)) if check_ir_first else ((True, False), (False, True))
    for dynamic, check_ir in attempts:
        if dynamic and not check_ir and check_ir_first and not isinstance(errors[-1], _Pinned):
            continue  # the check is skipped only when it is what pinned the batch
        try:
            with native_quiet():
                program, delegated = _lower(graph, (torch.zeros(2 if dynamic else 1, 3, *input_hw),), dynamic, check_ir)
        except Exception as exc:  # noqa: BLE001 - torch.export and the lowering raise many types
            errors.append(exc)
            continue
        if dynamic:
            notes = {} if check_ir else {"edge_ir_check": _UNCHECKED}
        else:
            said = ((str(e) or type(e).__name__).splitlines()[0][:300] for e in errors)
            notes = {"dynamic_batch_refused": "; ".join(dict.fromkeys(said))}
        _write(program, delegated, out, layers, notes)
        if not dynamic:
            return out
        try:
            _run_check(out)
            return out
        except _CannotRun as why:
            errors.append(_NotDynamic(f"the dynamic-batch program does not run at every batch: {why}"))
    out.unlink(missing_ok=True)
    text = str(errors[-1]) or type(errors[-1]).__name__
    raise ExportError("executorch-export", text.splitlines()[0][:500], operator=operator_in(text)) from errors[-1]


def _graph(module, input_hw):
    """The module exported as PT2E quantizes it, with a dynamic batch where torch.export gives one (a graph
    traced at batch 1 bakes the 1 into reshapes such as a channel shuffle's), else at batch 1. Its node
    names are what keep_float takes."""
    import torch

    with native_quiet():
        try:
            return torch.export.export(module, (torch.zeros(2, 3, *input_hw),), dynamic_shapes=_batch_dim()).module()
        except Exception:  # noqa: BLE001 - a model with a literal batch: the batch-1 graph below
            return torch.export.export(module, (torch.zeros(1, 3, *input_hw),)).module()


def _layers(graph) -> list[str]:
    """The graph's nodes the XNNPACK quantizer annotates (convolutions, linears, add, mul, cat, pooling), in
    order, by node name: what keep_float takes. The whole set, not only weighted layers: a spike in a
    multiplication's output is as much a reason to keep something in float as a convolution's."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    ops = set().union(*(p.op_overloads for p in XNNPACKQuantizer.SUPPORTED_PATTERNS))
    return [
        n.name
        for n in graph.graph.nodes
        if n.op == "call_function" and (n.target in ops or getattr(n.target, "overloadpacket", None) in ops)
    ]


def _batch_note(facts: dict) -> str:
    note = "lowered at batch 1: the runner runs one image at a time"
    refused = facts.get("dynamic_batch_refused")
    return f"{note} ({refused})" if refused else note


@register_backend
class ExecuTorchBackend(Backend):
    name = "executorch"
    toolchain = ("executorch", "torchao")
    capabilities = Capabilities(
        precisions=("fp32", "int8-static"),
        parity_tolerance={"fp32": 1e-4, "int8-static": None},
        notes={
            "fp32": "fp32 program, XNNPACK-delegated",
            "int8-static": "PT2E with the XNNPACK quantizer: int8 per-channel weights and static int8 activations",
        },
    )

    def export(self, work, *, onnx_path, module_factory, input_hw):
        require("executorch.exir", "executorch", "executorch", "ExecuTorch export")
        module = module_factory().eval()
        return _export(module, input_hw, work / "fp32.pte", _layers(_graph(module, input_hw)))

    def quantize(self, artifact, work, *, precision, calibration, options, module_factory, input_hw):
        import torch

        require("executorch.backends.xnnpack", "executorch", "executorch", "ExecuTorch quantization")
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = _graph(module_factory().eval(), input_hw)
        layers = _layers(graph)
        keep = list(options.get("keep_float") or [])
        unknown = sorted(set(keep) - set(layers))
        if unknown:
            raise ExportError("executorch-quantize", f"keep_float names {unknown}: not quantizable nodes of the graph")
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        if keep:  # the quantizer annotates no pattern holding a node its filter refuses: those stay in float
            kept = frozenset(keep)
            quantizer.set_filter_function(lambda node: node.name not in kept)
        with native_quiet():
            graph = prepare_pt2e(graph, quantizer)
            with torch.no_grad():
                for i in range(len(calibration)):
                    graph(torch.from_numpy(calibration[i : i + 1]))
            graph = convert_pt2e(graph)
        pinned = "edge_ir_check" in _facts(artifact)  # the fp32 export found the check pins this model's batch
        out = _export(graph, input_hw, work / f"{precision}.pte", layers, check_ir_first=not pinned)
        facts = {"method": "PT2E, XNNPACK quantizer", "config": "symmetric per-channel static"}
        return out, facts | ({"layers_kept_float": keep} if keep else {})

    def quantizable_layers(self, fp32):
        """The nodes the quantizer annotates, by name (recorded beside the fp32 program at export)."""
        return _facts(fp32)["layers"]

    def compile(self, artifact, out, runtime, precision):
        shutil.copyfile(artifact, out / MODEL)
        facts = _facts(artifact)
        try:
            largest, dynamic = _run_check(out / MODEL)
        except _CannotRun as why:
            raise ExportError("executorch-load", f"the ExecuTorch runtime cannot run this program: {why}") from None
        if facts["xnnpack_partitions"] == 0:
            raise ExportError("executorch-load", "the XNNPACK partitioner took no part of the graph")
        return {
            "delegate": "XNNPACK",
            "xnnpack_partitions": facts["xnnpack_partitions"],
            "max_batch": largest,
            "fixed_batch": None if dynamic else largest,
            **({} if dynamic else {"batch_note": _batch_note(facts)}),
            **({"edge_ir_check": facts["edge_ir_check"]} if dynamic and "edge_ir_check" in facts else {}),
        }
