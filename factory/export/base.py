"""What a conversion backend is, and the registry that finds one by name.

A backend is one module (``ort_backend``, ``openvino_backend``, ``litert_backend``) with a class
registered by :func:`register_backend` under the name of the device runtime it targets
(:mod:`factory.device.runtimes`). It *declares* what it can make as data (precisions, parity
tolerances, what each precision does on this runtime) and turns the canonical model into the
runtime's artifact: export, quantize, compile. Loading and running an artifact is the runtime's
job, so devices never import this package. Heavy imports (torch, the converters) happen inside
methods, never at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._deps import require
from .._faults import crash_point
from ..device.runtimes import Runtime, get_runtime
from ..errors import ExportError, FactoryError, UnknownNameError

__all__ = [
    "PRECISIONS",
    "Capabilities",
    "Backend",
    "register_backend",
    "get_backend",
    "backend_names",
    "require",
    "operator_in",
    "stage",
]

# Every precision a recipe can name. A backend supports a subset (its Capabilities.precisions).
PRECISIONS = ("fp32", "fp16", "int8-static", "int8-dynamic", "int8-weight-only")

_REGISTRY: dict[str, type["Backend"]] = {}
_discovered = False


@dataclass(frozen=True)
class Capabilities:
    """What a backend can make. What runs it (package, files, options) is its runtime's."""

    precisions: tuple[str, ...]
    # max |logit difference| expected vs the canonical model, per precision (None: not meaningful)
    parity_tolerance: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # precision -> what it does on this runtime


class Backend:
    """Base class; see the module docstring. Subclasses set ``name`` and ``capabilities``."""

    name: str = ""
    capabilities: Capabilities
    toolchain: tuple[str, ...] = ()  # pip packages beyond the shared TOOLCHAIN whose versions key its export cache

    @property
    def runtime(self) -> Runtime:
        """The device runtime that runs what this backend makes."""
        return get_runtime(self.name)

    def export(
        self, work: Path, *, onnx_path: Path, module_factory: Callable[[], Any], input_hw: tuple[int, int]
    ) -> Path:
        """Produce the fp32 artifact in ``work`` from the (possibly pruned) model; return its path."""
        raise NotImplementedError

    def quantize(
        self,
        artifact: Path,
        work: Path,
        *,
        precision: str,
        calibration: np.ndarray,
        options: dict,
        module_factory: Callable[[], Any],
        input_hw: tuple[int, int],
    ) -> tuple[Path, dict]:
        """Turn the fp32 artifact into ``precision``; return the new artifact and facts for the manifest."""
        raise NotImplementedError

    def cheap_fixes(self, precision: str, options: dict) -> list[tuple[str, dict]]:
        """Cheaper accuracy fixes for an int8 artifact that misses its target, tried one at a time before any
        layer is kept in float: (what it is, quantization option overrides). None by default."""
        return []

    def keep_float_options(self, options: dict) -> dict:
        """The quantization options the float stage of a repair starts from, given the best so far (a fix
        that cannot keep layers in float is swapped for one that can). Unchanged by default."""
        return options

    def quantizable_layers(self, fp32: Path) -> list[str]:
        """The layers an int8 repair may keep in float, by the names ``keep_float`` takes, in graph order."""
        raise NotImplementedError(f"{self.name} cannot keep layers in float")

    def compile(self, artifact: Path, out: Path, runtime: dict, precision: str) -> dict:
        """Optimise/check the artifact for this runtime and write the bundle files into ``out``.

        Returns facts for the manifest (e.g. the effective precision, the delegate applied).
        """
        raise NotImplementedError


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend findable by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every ``factory/export/*_backend.py`` once: a new runtime is a new file, nothing else.

    Runs once, whatever was imported before (importing one backend module by hand must not hide
    the others).
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    from .. import export

    for info in pkgutil.iter_modules(export.__path__):
        if info.name.endswith("_backend"):
            importlib.import_module(f"{export.__name__}.{info.name}")


def backend_names() -> list[str]:
    """Every registered backend, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an unknown name lists the valid ones."""
    if name not in backend_names():
        raise UnknownNameError("backend", name, backend_names())
    return _REGISTRY[name]()


# How runtimes and converters name the operator or node that failed, most specific first.
_OPERATOR_PATTERNS = [
    re.compile(r"((?:aten|torchvision)(?:\.|::)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)"),  # torch export / ONNX export
    re.compile(r"[Nn]ode(?: #| number |\s*\()?\s*(\d+)\s*\(([A-Z0-9_]+)\)"),  # TFLite: node #12 (CONV_2D)
    re.compile(r"[Nn]ode \(([^)]+)\) Op \(([^)]+)\)"),  # ONNX Runtime: Node (name) Op (Conv)
    re.compile(r"operation '?([A-Za-z0-9_./:-]+)'? of type '?([A-Za-z0-9_]+)'?"),  # OpenVINO
]


def operator_in(text: str) -> str | None:
    """The operator or node a runtime's error message names (``node #12 (CONV_2D)``, ``aten.logcumsumexp``)."""
    for pattern in _OPERATOR_PATTERNS:
        m = pattern.search(text or "")
        if m:
            return " ".join(g for g in m.groups() if g)
    return None


STAGE_LISTENERS: list = []  # callables told each stage's name as it starts (a build worker reports it)


def _enter(name: str) -> None:
    for listener in STAGE_LISTENERS:
        listener(name)
    crash_point(name)  # FACTORY_FAULT=segv@STAGE: a real SIGSEGV when STAGE starts (tests of crash containment)


@contextlib.contextmanager
def stage(name: str, hint: str | None = None):
    """Turn any failure inside a build stage into an ExportError naming the stage and, where the message
    names one, the operator; the project's own errors pass through unchanged."""
    _enter(name)
    try:
        yield
    except FactoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - converters and runtimes raise anything; name where it happened
        text = str(exc) or type(exc).__name__
        raise ExportError(
            name, f"{type(exc).__name__}: {text.splitlines()[0][:400]}", operator=operator_in(text), hint=hint
        ) from exc
