"""Edge model factory: one trained model in, verified and signed per-device bundles out.

The public surface is the ``factory`` command (see ``factory --help``) and the names below; heavy
backends (torch, onnxruntime, openvino, litert) are imported only by the modules that need them.

Layers (imports only point down; within a row, a package may import the ones to its left;
``tests/test_layers.py`` enforces it)::

    cli                             the command line
    pipeline   loop                 orchestration: build, search, publish, the main job, the data loop
    export     bench     registry   conversion backends | measuring and gating | the service
    bundle     train     device     manifests, signing, archives | training | runtimes, agent, telemetry
    data       monitor   tasks      datasets | pure drift/health math on summaries | task definitions
    the floor: errors, _io, config, stats, preprocess, lineage, progress, _quiet, _deps
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

__all__ = [
    "__version__",
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
