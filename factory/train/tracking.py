"""MLflow tracking with an embedded default: a SQLite store and an artifact folder in the project.

``MLFLOW_TRACKING_URI`` overrides the store (a server, PostgreSQL...); ``FACTORY_MLFLOW_ARTIFACTS`` names
the artifact root of experiments it creates (``s3://bucket/mlflow``: the S3 endpoint and credentials come
from ``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_*`` as MLflow reads them). MLflow is imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_DIR", "tracking_uri", "setup_experiment"]

DEFAULT_DIR = Path("mlruns")


def tracking_uri(base: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store in the project's mlruns/."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(base or DEFAULT_DIR).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def setup_experiment(name: str, base: str | Path | None = None) -> str:
    """Point MLflow at the store and return the experiment id (created with a project-local artifact root)."""
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(base)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        # A SQLite store keeps its artifacts beside the database (MLflow's own default is ./mlruns
        # of whatever folder the first run happened in). A server decides for itself.
        artifacts = os.environ.get("FACTORY_MLFLOW_ARTIFACTS") or None
        if artifacts is None and uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///") :]).parent / "artifacts").resolve().as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
