"""Edge model factory: one trained model in, verified and signed per-device bundles out.

The public surface is the ``factory`` command (see ``factory --help``) and the names below; heavy
backends (torch, onnxruntime, openvino, litert) are imported only by the modules that need them.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BundleError,
    ConfigError,
    DataError,
    ExportError,
    FactoryError,
    GateFailure,
    InputError,
    MissingDependencyError,
    ModelError,
    SignatureError,
    UnknownNameError,
    ValidationError,
)

from . import errors as _errors  # noqa: E402

__all__ = ["__version__", *_errors.__all__]
