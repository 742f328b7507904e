"""A bundle as an MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/id-docs@tflite")`` runs it.

The class lives on the device side because it is a device runtime in MLflow's clothes: it opens the
bundle logged as the ``bundle`` artifact with the bundle's own runtime and options.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["BundlePyfunc"]

try:  # mlflow is part of the train extra; a device without it never loads this class
    import mlflow.pyfunc

    _Base = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover
    _Base = object


with warnings.catch_warnings():  # MLflow warns at class creation that predict() has no type hints
    warnings.simplefilter("ignore")

    class BundlePyfunc(_Base):
        """Runs a bundle folder (logged as the ``bundle`` artifact) with its runtime."""

        def load_context(self, context):
            """Open the bundle (hash-checked) and load its runtime."""
            from ..tasks import get_task
            from .loader import open_bundle

            self.manifest, self.runner = open_bundle(Path(context.artifacts["bundle"]))
            self.task = get_task(self.manifest.validation.get("task"), self.manifest.output)

        def predict(self, context, model_input, params=None):
            """Raw model outputs for a preprocessed float32 batch; with ``params={"postprocess": True}``, the
            task's outputs per image (the same post-processing as the device agent's): classification
            ``{"label", "confidence"}``, detection a list of ``{"label", "score", "box"}`` (box in fractions
            of the frame), document localisation ``{"corners"}`` (fractions)."""
            raw = self.runner(np.asarray(model_input, dtype=np.float32))
            if not (params or {}).get("postprocess"):
                return raw
            return self.task.records(raw, self.manifest.labels)
