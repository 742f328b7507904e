"""The one way out for every bundle: sign, pack, and record it in MLflow.

A plain build and a search winner both end here. With tracking on, :func:`publish`:

1. starts an MLflow run, a child of the canonical model's training run;
2. writes the bundle to its final folder with the run, the registered model name and the target's
   alias in ``manifest.lineage.mlflow`` (so a device-side manifest leads back to the run), signed;
3. packs the archive (byte-reproducible);
4. logs the build's parameters and figures, the archive, and the bundle as a pyfunc model
   (:class:`factory.device.pyfunc.BundlePyfunc`), registers a model version under the model's name
   and points the target's alias at it (``models:/id-docs@tflite``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .._quiet import native_quiet
from ..bundle.archive import pack
from ..bundle.manifest import Manifest, copy_resigned
from ..tasks import quality_of

__all__ = ["BuildResult", "publish", "alias_for"]


@dataclass
class BuildResult:
    """A published bundle: its folder, its archive, its manifest and where MLflow has it."""

    folder: Path
    archive: Path
    manifest: Manifest
    tracking: dict | None = None

    @property
    def passed(self) -> bool:
        """Did the bundle meet its budgets?"""
        return self.manifest.passed


def alias_for(target: str) -> str:
    """The MLflow registered-model alias of a target (aliases allow [A-Za-z0-9_-])."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in target)


@contextlib.contextmanager
def _run(manifest: Manifest, track: bool):
    if not track:
        yield None
        return
    import mlflow

    from ..train.tracking import setup_experiment

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    setup_experiment("factory")
    tags = {"factory.stage": "build", "factory.target": manifest.target, "factory.version": manifest.version}
    train_run = (manifest.lineage.get("training", {}).get("mlflow") or {}).get("run_id")
    if train_run:
        tags["mlflow.parentRunId"] = train_run
    with mlflow.start_run(run_name=f"build-{manifest.target}-{manifest.version}", tags=tags) as run:
        yield run


def _log(run, folder: Path, archive: Path, m: Manifest) -> dict:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from ..device.pyfunc import BundlePyfunc

    recipe, p = m.recipe, m.validation["parity"]
    mlflow.log_params(
        {
            "target": m.target,
            "backend": m.runtime["backend"],
            "precision": recipe["precision"],
            "pruning": f"{recipe['pruning']['method']}:{recipe['pruning']['ratio']}",
            "version": m.version,
        }
    )
    q = quality_of(p)
    mlflow.log_metrics(
        {
            **{k: p[k] for k in (q.value, q.loss, "top1_agreement", "map") if k in p},
            "max_abs_diff": p["max_abs_diff"],
            "latency_p50_ms": m.latency["p50_ms"],
            "latency_p95_ms": m.latency["p95_ms"],
            "size_bytes": m.artifact["size_bytes"],
            "passed": float(m.passed),
        }
    )
    mlflow.log_artifact(str(archive), artifact_path="bundle-archive")
    example = np.zeros([2, *m.input["shape"][1:]], np.float32)
    with warnings.catch_warnings():  # MLflow nags about type hints and input examples we do not need
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(
            name="bundle",
            python_model=BundlePyfunc(),
            artifacts={"bundle": str(folder)},
            signature=infer_signature(
                example, np.zeros((2, *m.output["shape"][1:]), np.float32), params={"postprocess": False}
            ),
            pip_requirements=[f"{m.runtime['package']}>={m.runtime['min_version']}", "edge-model-factory"],
        )
    with native_quiet():  # "Registered model ... / Created version ..." chatter
        version = mlflow.register_model(info.model_uri, m.name)
    MlflowClient().set_registered_model_alias(m.name, alias_for(m.target), version.version)
    return {
        "run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "registered_version": version.version,
        "alias": f"models:/{m.name}@{alias_for(m.target)}",
    }


def publish(
    src: Path, dest: Path, key, *, track: bool = True, edit: Callable[[Manifest], None] | None = None
) -> BuildResult:
    """Copy the signed bundle ``src`` to ``dest`` (with ``edit`` applied), sign, pack and track it."""
    manifest = Manifest.read(src)
    with _run(manifest, track) as run:

        def finish(m: Manifest) -> None:
            if edit is not None:
                edit(m)
            if run is not None:
                import mlflow

                m.lineage["mlflow"] = {
                    "tracking_uri": mlflow.get_tracking_uri(),
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "registered_model": m.name,
                    "model_uri": f"models:/{m.name}@{alias_for(m.target)}",
                }

        manifest = copy_resigned(src, dest, key, finish)
        archive = pack(dest, dest.parent / f"{manifest.target}.tar.gz")
        tracking = _log(run, dest, archive, manifest) if run is not None else None
    return BuildResult(dest, archive, manifest, tracking)
