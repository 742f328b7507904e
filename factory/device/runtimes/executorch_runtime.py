"""ExecuTorch: a ``.pte`` program (its CPU work delegated to XNNPACK) run by ExecuTorch's Python runtime.

A program the factory lowered carries a constant method ``max_batch``: 1 when it was lowered at a batch
of 1, else the upper bound of its dynamic batch, of which the input's memory plan may keep less (a
program of another origin has the batch its input declares). The runner cuts a larger batch into
slices it takes. The Python runtime (``executorch.runtime``) imports torch, so a device that runs it
carries torch as well. ``runtime.threads`` sizes XNNPACK's thread pool, which is one per process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._deps import require
from ..._quiet import native_quiet
from . import Runtime, register_runtime

__all__ = ["ExecuTorchRuntime", "load_program", "batch_bounds", "MAX_BATCH_METHOD"]

MAX_BATCH_METHOD = "max_batch"  # a constant method the factory's export writes into every program


def load_program(path: Path):
    """(program, its forward method) of a ``.pte`` file; the runtime's native log goes to the quiet fds."""
    with native_quiet():  # the first import probes the CPU on stderr
        rt = require("executorch.runtime", "executorch", "device-executorch", "the executorch runtime")
        program = rt.Runtime.get().load_program(str(path))
        return program, program.load_method("forward")


def batch_bounds(program) -> tuple[list[int], int, bool]:
    """(the input's sizes, the largest batch the program takes, whether its batch is dynamic)."""
    sizes = [int(s) for s in program.metadata("forward").input_tensor_meta(0).sizes()]
    if MAX_BATCH_METHOD in program.method_names:
        asked = int(program.load_method(MAX_BATCH_METHOD).execute([])[0])
        # the input's sizes are its memory-planned capacity, which can be below the bound torch.export was given
        return sizes, min(asked, sizes[0]), asked > 1
    return sizes, sizes[0], False


class _Runner:
    def __init__(self, path: Path):
        import torch

        self._torch = torch
        self.program, self.method = load_program(path)
        _, self.largest, self.dynamic = batch_bounds(self.program)

    def _run(self, x) -> np.ndarray:
        return self.method.execute([x])[0].numpy().copy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        n = self.largest
        if len(x) == n or (self.dynamic and 0 < len(x) <= n):
            return self._run(x)
        # a program lowered at batch 1, or a batch over the dynamic bound: slices it takes (the last padded)
        out = []
        for i in range(0, len(x), n):
            part = x[i : i + n]
            if len(part) < n and not self.dynamic:
                part = self._torch.cat([part, part[-1:].expand(n - len(part), *part.shape[1:])])
            out.append(self._run(part)[: len(x) - i])
        return np.concatenate(out)


@register_runtime
class ExecuTorchRuntime(Runtime):
    name = "executorch"
    package = "executorch"
    min_version = "1.5"
    artifact_files = ("model.pte",)
    file_suffixes = (".pte",)
    dynamic_batch = True  # when torch.export keeps one; else the build's fixed_batch, and the manifest says so
    options = {"threads": 2}  # XNNPACK's thread pool: one per process (ExecuTorch's experimental reset call)

    def load_file(self, path, options):
        threads = int({**self.options, **options}["threads"])
        with native_quiet():  # the first import probes the CPU on stderr
            require("executorch.runtime", "executorch", "device-executorch", "the executorch runtime")
            from executorch.extension.pybindings import portable_lib

            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
        return _Runner(Path(path))

    def declared_input_shape(self, path):
        program, _ = load_program(Path(path))
        sizes, _, dynamic = batch_bounds(program)
        return [None, *sizes[1:]] if dynamic else sizes
