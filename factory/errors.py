"""The one error tree of the factory.

Every error the package raises on purpose is a :class:`FactoryError`. The CLI turns them into exit
codes (and nothing else does): input errors exit 2, failures exit 1. Messages say what went wrong
*and what to do next*; tracebacks are shown only with ``factory --debug``.

    FactoryError                      exit 1: something failed while doing the work
    ├── InputError                    exit 2: the user gave us something we cannot use
    │   ├── ConfigError               a config/profile/policy file: missing/unknown key, bad value
    │   ├── UnknownNameError          an architecture, target, backend... that is not registered
    │   ├── DataError                 a dataset: corrupt image, malformed CVAT XML, bad label
    │   ├── ModelError                a canonical model or model file that is missing or corrupt
    │   └── BundleError               a bundle that is malformed, tampered or unsafe to unpack
    │       └── SignatureError        a signature that does not verify against the given key
    ├── MissingDependencyError        an optional backend is not installed (names the pip command)
    ├── ExportError                   a conversion stage failed (names the stage and operator)
    ├── ValidationError               parity/budget checks gathered failures (carries the report)
    └── GateFailure                   a CI gate found a regression (exit 1 by design)
"""

from __future__ import annotations

__all__ = [
    "FactoryError",
    "InputError",
    "ConfigError",
    "UnknownNameError",
    "DataError",
    "ModelError",
    "BundleError",
    "SignatureError",
    "MissingDependencyError",
    "ExportError",
    "ValidationError",
    "GateFailure",
]


class FactoryError(Exception):
    """Base of every error the factory raises on purpose. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InputError(FactoryError):
    """Something the user handed us is unusable. Exit code 2 (a usage error)."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration, target profile or policy file is invalid."""


class UnknownNameError(InputError):
    """A name was looked up in a registry and is not there."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...], *, hint: str | None = None):
        shown = ", ".join(sorted(valid)) if valid else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {shown}", hint=hint)
        self.kind = kind
        self.name = name
        self.valid = list(valid)


class DataError(InputError):
    """A dataset, image or annotation file is unusable."""


class ModelError(InputError):
    """A model directory or model file is missing or corrupt."""


class BundleError(InputError):
    """A bundle is malformed, tampered with, or unsafe to unpack."""


class SignatureError(BundleError):
    """A signature does not verify against the trusted key."""


class MissingDependencyError(FactoryError):
    """An optional dependency is missing; the message names the install command."""

    def __init__(self, package: str, extra: str, purpose: str, *, broken: str | None = None):
        # installed, but importing it failed: say why, not that it is missing
        state = f"is installed but fails to import: {broken}" if broken else "is not installed"
        message = f"{purpose} needs the Python package {package!r}, which {state}"
        super().__init__(message, hint=f"pip install 'edge-model-factory[{extra}]'  (or: pip install {package})")
        self.package = package
        self.extra = extra


class ExportError(FactoryError):
    """A conversion stage failed. ``stage`` names it; ``operator`` names the op when known."""

    def __init__(self, stage: str, message: str, *, operator: str | None = None, hint: str | None = None):
        where = f"[{stage}]" + (f" operator {operator}:" if operator else "")
        super().__init__(f"{where} {message}", hint=hint)
        self.stage = stage
        self.operator = operator
        self.detail = message


class ValidationError(FactoryError):
    """Checks were all measured, then a policy found failures. ``report`` holds every figure."""

    def __init__(self, message: str, *, report: dict | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.report = report or {}


class GateFailure(FactoryError):
    """A gate found a regression."""
