"""``factory train``: train the canonical model from a YAML config."""

from __future__ import annotations

import click

__all__ = ["train_cmd"]


@click.command("train")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Training config YAML (see configs/train.yaml)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.epochs=3 (repeatable).",
)
@click.option(
    "--task",
    default=None,
    type=click.Choice(["classification", "detection", "document-localisation"]),
    help="What the model is for (same as --set model.task=...; default: the config's, else classification).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Data-parallel training processes on this machine (PyTorch DDP over gloo, started by torchrun's "
    "launcher); same as --set distributed.workers=N [default: the config's, else 1]. Not train.workers, "
    "which is the DataLoader's augmentation processes of each.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 1024),
    default=None,
    help="Machines training together: run the same command (same config, dataset at the same path) on each, "
    "with the same --rendezvous; same as --set distributed.nodes=M [default: 1].",
)
@click.option(
    "--rendezvous",
    metavar="HOST:PORT",
    default=None,
    help="With --nodes: where the nodes meet (torchrun's c10d rendezvous; the node at HOST serves it).",
)
@click.option("--list-architectures", is_flag=True, help="List the architectures that can be trained, then exit.")
def train_cmd(
    config_path: str | None,
    overrides: tuple[str, ...],
    task: str | None,
    workers: int | None,
    nodes: int | None,
    rendezvous: str | None,
    list_architectures: bool,
) -> None:
    """Train a model for its task and write the canonical model directory.

    Tasks: classification (a class per image), detection (boxes of several classes per frame; a
    dataset from `factory data synth --frames` or `factory data import coco`) and
    document-localisation (one document's four corners per frame). A detector is a classifier's
    backbone with a CenterNet-style head; see the documentation's Training and tasks page.

    \b
    The directory (output.dir in the config) holds:
      weights.pt            the PyTorch state_dict
      model.onnx            one file, opset 18, dynamic batch, checked against PyTorch
      model_card.json       architecture, input spec, preprocessing, labels, test metrics,
                            lineage (dataset hash, config hash, git, seed, MLflow run) and the
                            reference profile of the validation split used for drift monitoring
      confusion_matrix.png  on the test split

    Runs are tracked in MLflow (default: SQLite store in ./mlruns; MLFLOW_TRACKING_URI overrides).
    Pretrained weights are only ever read from a local file (model.pretrained); nothing is downloaded.

    With --workers N, N processes train one model together (DDP): each takes its slice of the same
    global batches (train.batch_size is the global batch), gradients are averaged, and the first
    process validates, logs the one MLflow run and writes the directory. A seed and N reproduce
    themselves exactly; N workers differ from one only by BatchNorm statistics per worker and
    dropout masks (see the documentation's "Training on several workers" for the measured tolerance).
    With --nodes M --rendezvous HOST:PORT, M machines run the same command and train together; the
    one that holds rank 0 writes the directory.

    \b
    Examples:
      factory train --config configs/train.yaml --set train.epochs=5
      factory train --config configs/train.yaml --workers 2
      factory train --config configs/train.yaml --workers 2 --nodes 2 --rendezvous 10.0.0.1:29400   # on both
      factory train --config configs/train.yaml --task detection --set data.manifest=data/frames/dataset.json \\
          --set 'model.image_size=[128,160]' --set output.dir=models/doc-detector
    """
    if list_architectures:
        from .models import list_models

        for name in list_models():
            click.echo(name)
        return
    if not config_path:
        raise click.UsageError("--config is required (e.g. --config configs/train.yaml)")
    from ..config import load_config
    from .loop import train
    from .schema import TRAIN_SCHEMA

    given = {"model.task": task, "distributed.workers": workers, "distributed.nodes": nodes,
             "distributed.rendezvous": rendezvous}  # fmt: skip
    extra = [f"{k}={v}" for k, v in given.items() if v]
    cfg = load_config(config_path, TRAIN_SCHEMA, (*overrides, *extra))
    model = train(cfg, config_path=config_path)
    if model is None:
        click.echo("this node's workers are done; the node that held rank 0 wrote the model and the MLflow run")
        return
    card = model.card
    test = card["metrics"]["test"]
    from ..tasks import get_task

    figure = "test " + get_task(model.task, card["output"]).summary(test)
    click.echo(
        f"wrote {model.path}: {card['architecture']} {figure} "
        f"on {test['n']} images; ONNX max abs diff {card['onnx_parity']['max_abs_diff']:.2e}; "
        f"MLflow run {card['lineage']['mlflow']['run_id']}"
    )
