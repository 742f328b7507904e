"""Builds in MLflow: a run linked to the training run, the bundle as an artifact, and a registered
model version per build with an alias per target (``models:/id-docs@cpu``).

The registered model is a pyfunc that runs the bundle with its own runtime, so
``mlflow.pyfunc.load_model("models:/id-docs@tflite").predict(batch)`` gives that target's logits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .._quiet import native_quiet

__all__ = ["log_build", "BundlePyfunc"]

try:  # mlflow is part of the train extra; without it, builds are simply not tracked
    import mlflow.pyfunc

    _Base = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover
    _Base = object


with warnings.catch_warnings():  # MLflow warns at class creation that predict() has no type hints
    warnings.simplefilter("ignore")

    class BundlePyfunc(_Base):
        """Runs a bundle folder (logged as the ``bundle`` artifact) with its runtime."""

        def load_context(self, context):
            from .manifest import open_bundle

            self.manifest, self.runner = open_bundle(Path(context.artifacts["bundle"]))

        def predict(self, context, model_input, params=None):
            batch = np.asarray(model_input, dtype=np.float32)
            return self.runner(batch)


def _alias(target: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in target)


def log_build(result) -> dict:
    """Log a build; returns the run id, model URI and registered version (also put in the manifest's shadow)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from ..train.tracking import setup_experiment

    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    m = result.manifest
    train_run = (m["lineage"]["training"].get("mlflow") or {}).get("run_id")
    setup_experiment("factory")
    tags = {"factory.stage": "build", "factory.target": m["target"], "factory.version": m["version"]}
    if train_run:
        tags["mlflow.parentRunId"] = train_run
    with mlflow.start_run(run_name=f"build-{m['target']}-{m['version']}", tags=tags) as run:
        recipe = m["recipe"]
        mlflow.log_params({"target": m["target"], "backend": m["runtime"]["backend"], "precision": recipe["precision"],
                           "pruning": f"{recipe['pruning']['method']}:{recipe['pruning']['ratio']}", "version": m["version"]})
        p = m["validation"]["parity"]
        mlflow.log_metrics({"top1": p["top1"], "accuracy_drop_pt": p["accuracy_drop_pt"], "top1_agreement": p["top1_agreement"],
                            "max_abs_diff": p["max_abs_diff"], "latency_p50_ms": m["latency"]["p50_ms"],
                            "latency_p95_ms": m["latency"]["p95_ms"], "size_bytes": m["artifact"]["size_bytes"],
                            "passed": float(m["validation"]["passed"])})
        mlflow.log_artifact(str(result.archive), artifact_path="bundle-archive")
        shape = [2, *m["input"]["shape"][1:]]
        example = np.zeros(shape, np.float32)
        with warnings.catch_warnings():  # MLflow nags about type hints and input examples we do not need
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="bundle", python_model=BundlePyfunc(), artifacts={"bundle": str(result.folder)},
                signature=infer_signature(example, np.zeros((2, len(m["labels"])), np.float32)),
                pip_requirements=[f"{m['runtime']['package']}>={m['runtime']['min_version']}", "edge-model-factory"],
            )
        with native_quiet():  # "Registered model ... / Created version ..." chatter
            version = mlflow.register_model(info.model_uri, m["name"])
        MlflowClient().set_registered_model_alias(m["name"], _alias(m["target"]), version.version)
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "registered_version": version.version,
            "alias": f"models:/{m['name']}@{_alias(m['target'])}"}
