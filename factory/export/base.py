"""What a runtime backend is, and the registry that finds one by name.

A backend is one module (``ort_backend``, ``openvino_backend``, ``litert_backend``) with a class
registered by :func:`register_backend`. It *declares* its capabilities as data (precisions, runtime
options, parity tolerances, whether it takes a dynamic batch) so the CLI, target validation, the
build and the benchmarks read one table instead of branching on names. Heavy imports (torch, the
runtime itself) happen inside methods, never at import time, so a device can load a runner
without the training stack.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import MissingDependencyError, UnknownNameError

__all__ = [
    "PRECISIONS",
    "Runner",
    "Capabilities",
    "Backend",
    "register_backend",
    "get_backend",
    "backend_names",
    "require",
    "backend_for_file",
]

# Every precision a recipe can name. A backend supports a subset (its Capabilities.precisions).
PRECISIONS = ("fp32", "fp16", "int8-static", "int8-dynamic", "int8-weight-only")

_REGISTRY: dict[str, type["Backend"]] = {}


class Runner(Protocol):
    """Takes a preprocessed float32 NCHW batch, returns float32 logits (N, classes)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Capabilities:
    runtime_package: str  # the pip distribution that runs the artifact on a device
    min_runtime_version: str
    artifact_files: tuple[str, ...]  # file names a bundle of this backend holds, main one first
    file_suffixes: tuple[str, ...]  # bare model files this backend can run (factory bench model.onnx)
    precisions: tuple[str, ...]
    dynamic_batch: bool
    # max |logit difference| expected vs the canonical model, per precision (None: not meaningful)
    parity_tolerance: dict[str, float | None] = field(default_factory=dict)
    runtime_options: dict[str, Any] = field(default_factory=dict)  # option -> default
    notes: dict[str, str] = field(default_factory=dict)  # precision -> what it does on this runtime


class Backend:
    """Base class; see the module docstring. Subclasses set ``name`` and ``capabilities``."""

    name: str = ""
    capabilities: Capabilities

    def runtime_version(self) -> str:
        from importlib import metadata

        return metadata.version(self.capabilities.runtime_package)

    def export(self, work: Path, *, onnx_path: Path, module_factory: Callable[[], Any], input_hw: tuple[int, int]) -> Path:
        """Produce the fp32 artifact in ``work`` from the (possibly pruned) model; return its path."""
        raise NotImplementedError

    def quantize(self, artifact: Path, work: Path, *, precision: str, calibration: np.ndarray, options: dict,
                 module_factory: Callable[[], Any], input_hw: tuple[int, int]) -> tuple[Path, dict]:
        """Turn the fp32 artifact into ``precision``; return the new artifact and facts for the manifest."""
        raise NotImplementedError

    def resolve_runtime(self, runtime: dict, precision: str) -> dict:
        """Fill runtime options that depend on the precision (e.g. an inference-precision hint)."""
        return dict(runtime)

    def compile(self, artifact: Path, out: Path, runtime: dict, precision: str) -> dict:
        """Optimise/check the artifact for this runtime and write the bundle files into ``out``.

        Returns facts for the manifest (e.g. the effective precision, the delegate applied).
        """
        raise NotImplementedError

    def load_runner(self, folder: Path, runtime: dict) -> Runner:
        """Load the bundle files in ``folder`` into a runner."""
        return self.runner_for_file(Path(folder) / self.capabilities.artifact_files[0], runtime)

    def runner_for_file(self, path: Path, runtime: dict) -> Runner:
        """Load one model file (the main artifact file) into a runner."""
        raise NotImplementedError

    def declared_input_shape(self, path: Path) -> list[int | None]:
        """The input shape the model file declares; None for a dynamic dimension."""
        raise NotImplementedError


def backend_for_file(path: Path) -> Backend:
    """The registered backend whose capabilities list this file's suffix."""
    suffix = Path(path).suffix.lower()
    for name in backend_names():
        backend = get_backend(name)
        if suffix in backend.capabilities.file_suffixes:
            return backend
    known = sorted(s for n in backend_names() for s in get_backend(n).capabilities.file_suffixes)
    raise UnknownNameError("model file type", suffix or str(path), known)


def register_backend(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every ``factory/export/*_backend.py`` once: a new runtime is a new file, nothing else."""
    import pkgutil

    from .. import export

    for info in pkgutil.iter_modules(export.__path__):
        if info.name.endswith("_backend"):
            importlib.import_module(f"{export.__name__}.{info.name}")


def backend_names() -> list[str]:
    if not _REGISTRY:
        _discover()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in backend_names():
        raise UnknownNameError("backend", name, backend_names())
    return _REGISTRY[name]()


def require(module: str, package: str, extra: str, purpose: str):
    """Import an optional dependency or raise an error that names the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, extra, purpose) from None
