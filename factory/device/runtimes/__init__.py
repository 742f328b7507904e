"""Runtimes that run a model on a device, and the registry that finds one by name.

A runtime is one module (``ort_runtime``, ``openvino_runtime``, ``litert_runtime``) with a class
registered by :func:`register_runtime`. It *declares* what a device needs to know as data (the pip
package and minimum version, the files a bundle of it holds, the model-file suffixes it opens,
whether it takes a dynamic batch, its options and their defaults) and loads model files into
:class:`Runner` callables. Nothing here converts or quantizes (that is :mod:`factory.export`), so
a device runs bundles without the build toolchain. Heavy imports happen inside methods.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...errors import UnknownNameError

__all__ = ["Runner", "Runtime", "register_runtime", "get_runtime", "runtime_names", "runtime_for_file"]

_REGISTRY: dict[str, type["Runtime"]] = {}
_discovered = False


class Runner(Protocol):
    """Takes a preprocessed float32 NCHW batch, returns the model's raw float32 output (N, ...)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class Runtime:
    """Base class; see the module docstring. Subclasses set the class attributes below."""

    name: str = ""
    package: str = ""  # the pip distribution that runs the artifact on a device
    min_version: str = ""
    artifact_files: tuple[str, ...] = ()  # file names a bundle of this runtime holds, main one first
    file_suffixes: tuple[str, ...] = ()  # bare model files this runtime can run (factory bench model.onnx)
    dynamic_batch: bool = True
    options: dict[str, Any] = {}  # option -> default

    def version(self) -> str:
        """The installed version of the runtime package."""
        from importlib import metadata

        return metadata.version(self.package)

    def resolve_options(self, options: dict, precision: str) -> dict:
        """Defaults filled in, plus options that depend on the precision (e.g. an inference-precision hint)."""
        return {**self.options, **options}

    def load(self, folder: Path, options: dict) -> Runner:
        """Load the bundle files in ``folder`` into a runner."""
        return self.load_file(Path(folder) / self.artifact_files[0], options)

    def load_file(self, path: Path, options: dict) -> Runner:
        """Load one model file (the main artifact file) into a runner."""
        raise NotImplementedError

    def declared_input_shape(self, path: Path) -> list[int | None]:
        """The input shape the model file declares; None for a dynamic dimension."""
        raise NotImplementedError


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a runtime findable by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every ``factory/device/runtimes/*_runtime.py`` once: a new runtime is a new file."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith("_runtime"):
            importlib.import_module(f"{__name__}.{info.name}")


def runtime_names() -> list[str]:
    """Every registered runtime, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name``; an unknown name lists the valid ones."""
    if name not in runtime_names():
        raise UnknownNameError("runtime", name, runtime_names())
    return _REGISTRY[name]()


def runtime_for_file(path: Path) -> Runtime:
    """The registered runtime whose file suffixes include this file's."""
    suffix = Path(path).suffix.lower()
    for name in runtime_names():
        runtime = get_runtime(name)
        if suffix in runtime.file_suffixes:
            return runtime
    known = sorted(s for n in runtime_names() for s in get_runtime(n).file_suffixes)
    raise UnknownNameError("model file type", suffix or str(path), known)
