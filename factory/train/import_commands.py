"""``factory model import``: bring your own model (see :mod:`.importer`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError

__all__ = ["model_group"]


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--{what} {text!r} is not numbers like 0.5 or 0.485,0.456,0.406") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise InputError(f"--{what} takes one value or three (one per channel, in the model's channel order)")
    return values


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {text!r} is not HEIGHTxWIDTH like 48x192") from None
    if min(h, w) < 8 or max(h, w) > 4096:
        raise InputError(f"--size {text!r}: height and width must be 8..4096")
    return h, w


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        if path.stat().st_size > 1_000_000:
            raise InputError(f"--labels {path} is over 1 MB; a labels file lists one class per line")
        raw = path.read_text(encoding="utf-8")
        if raw.lstrip().startswith("["):
            import json

            labels = json.loads(raw)
        else:
            labels = [line.strip() for line in raw.splitlines() if line.strip()]
    else:
        labels = [v.strip() for v in text.split(",") if v.strip()]
    if len(labels) < 2 or not all(isinstance(v, str) for v in labels):
        raise InputError(f"--labels {text!r}: give a file (one label per line, or a JSON list) or a,b,c with 2 or more")
    return labels


@click.group("model")
def model_group() -> None:
    """Canonical models that `factory train` did not make: bring your own."""


@model_group.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The canonical model directory to write (as `factory train` writes it).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="A factory dataset (dataset.json or its folder) of the model's classes: the import is evaluated on "
    "its test split and the reference profile made from its validation split.",
)
@click.option("--name", default="imported", show_default=True, help="Model name for bundles and the registry.")
@click.option(
    "--task",
    default="classification",
    type=click.Choice(["classification"]),
    show_default=True,
    help="What the model is for (detection and localisation imports are not built yet).",
)
@click.option(
    "--labels",
    default=None,
    help="The labels in output order: a file (one per line, or a JSON list) or "
    "a,b,c. [default: the dataset's classes in its order]",
)
@click.option("--size", default=None, help="Input HEIGHTxWIDTH, e.g. 48x192 [default: the ONNX graph's, if fixed].")
@click.option(
    "--color-order",
    type=click.Choice(["RGB", "BGR"], case_sensitive=False),
    default="RGB",
    show_default=True,
    help="The channel order the model was trained on.",
)
@click.option("--mean", default=None, help="Per-channel mean after scaling, one value or three [default: ImageNet's].")
@click.option("--std", default=None, help="Per-channel std after scaling, one value or three [default: ImageNet's].")
@click.option(
    "--scale",
    type=float,
    default=1 / 255,
    show_default="1/255",
    help="Pixels are multiplied by this first: input = (pixel*scale - mean) / std.",
)
@click.option(
    "--offset", default=None, help="Instead of --mean/--std: input = pixel*scale + offset (one value or three)."
)
@click.option(
    "--layout",
    type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
    default="NCHW",
    show_default=True,
    help="The ONNX graph's input layout (NHWC gets a Transpose in front).",
)
@click.option(
    "--outputs",
    type=click.Choice(["auto", "logits", "probabilities"]),
    default="auto",
    show_default=True,
    help="What the output holds; auto: a trailing Softmax, or rows that sum to 1, are probabilities.",
)
@click.option("--output", "output_name", default=None, help="Which graph output is the class scores (if several).")
@click.option(
    "--architecture",
    default=None,
    help="With a state_dict (or to give a .pt2 program's weights to it): a torchvision name, tiny-cnn, "
    "or timm:NAME. Only then can the model be pruned and retrained.",
)
@click.option(
    "--parity-tolerance",
    type=float,
    default=1e-4,
    show_default=True,
    help="Largest difference allowed between the canonical graph and the source on test images.",
)
def import_cmd(
    source: Path,
    out: Path,
    data: Path,
    name: str,
    task: str,
    labels: str | None,
    size: str | None,
    color_order: str,
    mean: str | None,
    std: str | None,
    scale: float,
    offset: str | None,
    layout: str,
    outputs: str,
    output_name: str | None,
    architecture: str | None,
    parity_tolerance: float,
) -> None:
    """Make a canonical model directory from a model trained elsewhere.

    \b
    SOURCE is one of (told apart by the file's contents, not its name):
      an ONNX graph      any exporter, opset 11+, NCHW or NHWC, dynamic batch and/or H/W, logits or
                         probabilities (a trailing Softmax is removed: bundles carry raw scores)
      a .pt2 program     torch.export.save(...); with --architecture its weights go to that architecture
      TorchScript        torch.jit.save(...); exported once to ONNX
      a state_dict       torch.save(model.state_dict()) with --architecture NAME

    The import checks the preprocessing against the graph (layout, channels, size), the labels against
    the output width and the canonical graph against the source (--parity-tolerance), evaluates it on
    --data's test split and writes nothing unless all of that passes. Then build, bench, gate, publish
    and roll out as for a trained model; pruning needs --architecture (a torch module to prune).

    \b
    Examples:
      factory model import classifier.onnx --data data/mine --out models/mine --size 48x192 \\
          --color-order BGR --mean 0.5 --std 0.5 --labels labels.txt
      factory model import weights.pth --architecture mobilenet_v3_small --size 128x128 \\
          --data data/synth --out models/mnv3
      factory model import program.pt2 --data data/synth --out models/prog --size 128x128
    """
    from .importer import ImportRequest, import_model

    means, stds = _floats(mean, "mean"), _floats(std, "std")
    if offset is not None:
        if mean or std:
            raise InputError("--offset replaces --mean/--std; give one or the other")
        means, stds = [-v for v in _floats(offset, "offset")], [1.0, 1.0, 1.0]
    req = ImportRequest(source=source, out=out, data=data, name=name, task=task, labels=_labels(labels),
                        size=_size(size), color_order=color_order.upper(), scale=scale, layout=layout.upper(),
                        outputs=outputs, output=output_name, architecture=architecture,
                        parity_tolerance=parity_tolerance)  # fmt: skip
    if means:
        req.mean = means
    if stds:
        if any(v == 0 for v in stds):
            raise InputError("--std must not be 0")
        req.std = stds
    model = import_model(req)
    card = model.card
    test = card["metrics"]["test"]
    click.echo(f"wrote {model.path}: {card['source']['kind']} import, test top-1 {test['top1']:.4f} on {test['n']} "
               f"images; max abs diff to the source {card['onnx_parity']['max_abs_diff']:.2e}")  # fmt: skip
    for w in card["source"]["warnings"]:
        click.echo(f"warning: {w}", err=True)
