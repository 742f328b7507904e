"""``factory targets``: the target profiles and what their backends support."""

from __future__ import annotations

import click

__all__ = ["targets_cmd"]


@click.command("targets")
@click.option("--targets-dir", default=None, type=click.Path(file_okay=False))
def targets_cmd(targets_dir) -> None:
    """List the target profiles and what their backends support."""
    from .base import get_backend
    from .targets import load_target, target_names

    for name in target_names(targets_dir):
        p = load_target(name, targets_dir)
        caps = get_backend(p["backend"]).capabilities
        click.echo(
            f"{name:12s} {p['backend']:12s} {p['recipe']['precision']:16s} supports: {', '.join(caps.precisions)}"
            f"   {p['description']}"
        )
