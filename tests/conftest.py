"""Shared fixtures: a tiny synthetic dataset, a private MLflow store, a tiny trained model.

Everything is real (OpenCV, PyTorch, ONNX Runtime, MLflow on SQLite); only the sizes are small.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _target_of_backend() -> dict[str, str]:
    """backend -> the packaged target profile that runs it: how the suite walks every registered runtime."""
    found: dict[str, str] = {}
    for src in sorted((ROOT / "targets").glob("*.yaml")):
        found.setdefault(yaml.safe_load(src.read_text())["backend"], src.stem)
    return found


TARGET_OF = _target_of_backend()  # e.g. {"onnxruntime": "cpu", "openvino": "openvino", "litert": "tflite", ...}

# Builds run in this process unless a test asks for a worker: tests register architectures and backends
# in-process and read progress lines from the command's output. tests/test_isolation.py runs the default
# (a worker process per command) on purpose.
os.environ.setdefault("FACTORY_EXECUTOR", "local")

DBS = ["sqlite"] + (["postgresql"] if os.environ.get("FACTORY_TEST_POSTGRES_URL") else [])


def db_url(kind: str, tmp) -> str:
    """A fresh database of ``kind`` (sqlite or postgresql) for one registry under test."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'registry.db'}"
    import sqlalchemy as sa

    base = os.environ["FACTORY_TEST_POSTGRES_URL"]
    name = f"reg_{int(time.time() * 1000) % 10**9}_{os.getpid()}"
    eng = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return base.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlruns")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    yield folder
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def invoke(*args: str, cwd: Path | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr, output)."""
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli, list(args), catch_exceptions=True)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, list(args), catch_exceptions=True)
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def synth_ds(tmp_path_factory) -> Path:
    from factory.data.synth import synthesize

    out = tmp_path_factory.mktemp("data") / "synth"
    synthesize(out, seed=3, per_class=14, size=(96, 72))
    return out


FRAME_TYPES = "id-card,passport,visa"


@pytest.fixture(scope="session")
def frames_ds(tmp_path_factory) -> Path:
    """72 detection frames of zero to three documents of three types (96x80)."""
    from factory.data.synth import synthesize_frames

    out = tmp_path_factory.mktemp("frames") / "frames"
    synthesize_frames(out, seed=5, frames=72, size=(96, 80), classes=FRAME_TYPES.split(","))
    return out


def write_train_config(path: Path, manifest: Path, out: Path, **overrides) -> Path:
    cfg = {
        "data": {"manifest": str(manifest)},
        "model": {"architecture": "tiny-cnn", "image_size": [32, 32]},
        "train": {"epochs": 2, "batch_size": 16, "workers": 0, "seed": 0},
        "eval": {"parity_images": 64},
        "output": {"dir": str(out)},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synth_ds):
    """A tiny canonical model trained once per session through the real CLI."""
    from factory.train.canonical import load_canonical

    work = tmp_path_factory.mktemp("train")
    cfg = write_train_config(work / "train.yaml", synth_ds / "dataset.json", work / "model")
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    return load_canonical(work / "model")


@pytest.fixture(scope="session")
def keypair(tmp_path_factory):
    from factory.bundle.signing import generate_keys

    return generate_keys(tmp_path_factory.mktemp("keys") / "signing")


@pytest.fixture(scope="session")
def loose_targets(tmp_path_factory) -> Path:
    """The repository's target profiles with budgets loosened for a 2-epoch tiny model."""
    folder = tmp_path_factory.mktemp("targets")
    for src in (ROOT / "targets").glob("*.yaml"):
        profile = yaml.safe_load(src.read_text())
        profile["budgets"] = {
            "max_accuracy_drop_pt": 100.0,
            "min_top1_agreement": 0.0,
            "max_latency_ms": None,
            "max_size_mb": None,
        }
        profile["recipe"].setdefault("quantization", {})["calibration_images"] = 16
        (folder / src.name).write_text(yaml.safe_dump(profile))
    return folder


def build_args(model: Path, target: str, keypair, targets: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build",
        "--target",
        target,
        "--model",
        str(model),
        "--key",
        str(keypair[0]),
        "--targets-dir",
        str(targets),
        "--out",
        str(out),
        "--cache-dir",
        str(out.parent / "cache"),
        *extra,
    ]


def build_cpu_release(trained, synth_ds, keypair, targets: Path, out: Path, version: str = "1.0.0") -> Path:
    """The session's tiny model built for cpu at ``version`` (validated on ``synth_ds``, signed, not tracked):
    the bundle folder, as the fleet, loop, fault and security tests publish it."""
    result = invoke(
        *build_args(
            trained.path, "cpu", keypair, targets, out, "--data", str(synth_ds), "--no-track", "--version", version
        )
    )
    assert result.exit_code == 0, result.output
    return next(out.glob(f"*/{version}/cpu"))


def quick_search(model: Path, keypair, targets: Path, tmp: Path, *extra: str):
    """``factory build --search`` of cpu over fp32 and int8-static with a 1 s benchmark; (result, search.json)."""
    import json

    config = tmp / "space.yaml"
    config.write_text("space:\n  recipe.precision: [fp32, int8-static]\nbench_seconds: 1\n")
    args = build_args(
        model,
        "cpu",
        keypair,
        targets,
        tmp / "b",
        "--no-track",
        "--search",
        "--search-config",
        str(config),
        "--search-dir",
        str(tmp / "r"),
        *extra,
    )
    result = invoke(*args)
    found = list((tmp / "r").rglob("search.json"))
    return result, (json.loads(found[0].read_text()) if found else None)
