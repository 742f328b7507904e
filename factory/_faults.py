"""Fault injection for tests and benchmarks: real crashes at named points, chosen by ``$FACTORY_FAULT``.

``segv@STAGE`` makes a genuine invalid read when a build stage starts (crash containment of converters);
``kill@POINT`` sends this process SIGKILL at a point of the registry where a crash hurts most (a blob
stored but its row not committed, a rollout transition written but not committed). Unset, nothing happens.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "crash_point"]

FAULT_ENV = "FACTORY_FAULT"


def crash_point(name: str) -> None:
    """Crash here if ``$FACTORY_FAULT`` names this point (``segv@NAME`` or ``kill@NAME``)."""
    fault = os.environ.get(FAULT_ENV)
    if not fault or not fault.endswith(f"@{name}"):
        return
    if fault == f"segv@{name}":
        import ctypes

        ctypes.string_at(0)  # a genuine invalid read, as a crashing converter does
    elif fault == f"kill@{name}":
        os.kill(os.getpid(), signal.SIGKILL)
