"""The ``factory`` command. Errors become exit codes here and only here.

Exit codes: 0 success, 1 failure (a stage failed, a gate found a regression), 2 usage or input
error (bad flag, bad config, unusable data or model). ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import sys

import click

from . import __version__, progress
from .errors import FactoryError

__all__ = ["main", "cli"]


class FactoryGroup(click.Group):
    """A click group that turns FactoryError into a one-paragraph message and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FactoryError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {exc}", err=True, fg="red")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was left behind", err=True)
            ctx.exit(130)


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="factory")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-q", "--quiet", is_flag=True, help="Hide progress bars and status lines (stderr).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Edge model factory: from images to verified, signed per-device model bundles.

    \b
    The loop, one command per stage:
      factory data synth|import   make a dataset (images + manifest with hashes and splits)
      factory data report         profile it (EDA: class balance, brightness, duplicates)
      factory train               train the canonical model (MLflow-tracked; weights + ONNX + card)
      factory model import        ... or bring your own (ONNX, .pt2, TorchScript, architecture + state_dict)
      factory build --target T    per-target export: prune, quantize, compile, validate, sign
      factory pipeline build      localise -> rectify -> classify: two stages as one signed release
      factory bundle verify|inspect   check and read bundles; `factory keys generate` makes keys
      factory bench               interleaved latency + accuracy of bundles and models
      factory gate                CI gate: fail a change that got slower or less accurate
      factory registry serve      the bundle registry (HTTP); `release publish`, `rollout create|...`
      factory device run          the device agent; `factory fleet simulate` runs many of them
      factory data captures|version   field captures -> CVAT task -> a new dataset version
      factory loop run|demo       retrain on it, gate, publish, roll out (the closed loop)
      factory run                 all of the above on embedded defaults (params.yaml)

    Exit codes: 0 ok, 1 a stage failed, 2 bad usage or input.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    progress.set_enabled(not quiet)


def _register() -> None:
    from .bench.commands import bench_cmd, gate_cmd
    from .bundle.commands import bundle, keys
    from .data.commands import data
    from .device.commands import device, fleet
    from .export.commands import targets_cmd
    from .loop.commands import captures_group, loop, version_cmd
    from .pipeline.chain_commands import pipeline_group
    from .pipeline.commands import build_cmd, parity_cmd
    from .pipeline.main import run
    from .registry.commands import registry, release, rollout
    from .train.commands import train_cmd
    from .train.import_commands import model_group

    for command in (
        data,
        train_cmd,
        model_group,
        build_cmd,
        pipeline_group,
        targets_cmd,
        keys,
        bundle,
        bench_cmd,
        gate_cmd,
        registry,
        release,
        rollout,
        device,
        fleet,
        run,
        loop,
    ):
        cli.add_command(command)
    bundle.add_command(parity_cmd)  # needs the build context (pipeline), so it is attached here
    data.add_command(captures_group)  # the closed loop's data steps (they talk to the registry: layer loop)
    data.add_command(version_cmd)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``factory`` console script."""
    cli.main(args=argv, prog_name="factory")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
