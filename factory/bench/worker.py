"""One benchmark worker process per artifact.

Runtimes disturb each other inside one process on a small machine (thread pools that spin, that
compete for the same two cores, that were sized before the others existed). Measured here with
all four loaded in one process: LiteRT 0.65 -> 1.06 ms beside ONNX Runtime, PyTorch eager 7 ->
11 ms. So each artifact runs in its own freshly spawned interpreter, and the parent only tells them
whose turn it is; timing happens inside the worker, around the inference call alone.

Idle workers are not merely idle: a runtime's thread pool spins or wakes up on its own, and on two
cores that is enough to slow the artifact being timed (six copies of one ONNX Runtime model read 2.6-4.2
ms against 1.7 ms alone in an 8-way run). So every worker is stopped (SIGSTOP) except during its own
turn: only one artifact of the benchmark can run at any time.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["WorkerSpec", "Worker"]


@dataclass
class WorkerSpec:
    path: str  # openable path: bundle folder, canonical folder or model file
    threads: int
    input_shape: tuple[int, ...]
    seed: int = 0


def _serve(conn, spec: WorkerSpec) -> None:
    from .. import progress
    from .artifacts import open_artifacts

    progress.set_enabled(False)
    try:
        with contextlib.ExitStack() as stack:
            shape = ",".join(map(str, spec.input_shape))
            art = open_artifacts([spec.path], threads=spec.threads, input_shape=shape, stack=stack)[0]
            rng = np.random.default_rng(spec.seed)
            if art.task == "pipeline":  # a camera frame: uint8 BGR pixels, not a model's float tensor
                x = rng.integers(0, 256, spec.input_shape, dtype=np.uint8)
            else:
                x = np.ascontiguousarray(rng.standard_normal(spec.input_shape).astype(np.float32))
            conn.send(("ready", None))
            timer = time.perf_counter_ns
            while True:
                cmd, settle_ms, n = conn.recv()
                if cmd == "stop":
                    break
                settle_end = timer() + int(settle_ms * 1e6)
                art.runner(x)  # at least one untimed run, then more until settle_ms has passed
                while timer() < settle_end:
                    art.runner(x)
                times = []
                for _ in range(n):
                    t0 = timer()
                    art.runner(x)
                    times.append((timer() - t0) / 1e6)
                conn.send(("times", times))
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Worker:
    """A spawned process holding one artifact; ``turn()`` returns the timed runs in ms."""

    isolated = hasattr(signal, "SIGSTOP")

    def __init__(self, spec: WorkerSpec):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, spec), daemon=True)
        self._proc.start()
        child.close()

    def wait_ready(self, timeout: float = 300.0) -> None:
        if not self._conn.poll(timeout):
            raise RuntimeError("benchmark worker did not start in time")
        kind, payload = self._conn.recv()
        if kind == "error":
            raise RuntimeError(payload)

    def turn(self, settle_ms: float, n: int) -> list[float]:
        """Untimed runs for ``settle_ms`` (at least one), then ``n`` timed runs."""
        self.resume()
        try:
            self._conn.send(("turn", settle_ms, n))
            kind, payload = self._conn.recv()
        finally:
            self.pause()
        if kind == "error":
            raise RuntimeError(payload)
        return payload

    def pause(self) -> None:
        """Stop the whole process (SIGSTOP) while others are timed: its runtime's thread pools cannot spin,
        prefetch or migrate onto the cores another artifact is being timed on. No-op where there are no
        POSIX signals."""
        if self.isolated:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused worker run again (SIGCONT)."""
        if self.isolated:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        with contextlib.suppress(Exception):
            self._conn.send(("stop", 0, 0))
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
