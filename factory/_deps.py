"""Optional dependencies: import one, or raise an error that names the pip command (never install)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["require", "pyplot"]


def require(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency or raise MissingDependencyError naming ``pip install ...[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.partition(".")[0]
        installed = top != e.name and importlib.util.find_spec(top) is not None
        raise MissingDependencyError(package, extra, purpose, broken=f"{e}" if installed else None) from None


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (charts are build- and report-side: the ``reports``
    extra; a device install has no matplotlib)."""
    mpl = require("matplotlib", "matplotlib", "reports", "charts")
    mpl.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
