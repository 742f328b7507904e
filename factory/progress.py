"""Progress bars for long work, on stderr so stdout stays machine-readable. ``factory -q`` hides them."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click

__all__ = ["set_enabled", "enabled", "bar", "info"]

_enabled = True


def set_enabled(value: bool) -> None:
    """Show (True) or hide (``factory -q``) progress output."""
    global _enabled
    _enabled = value


def enabled() -> bool:
    """Is progress output shown?"""
    return _enabled


class _Bar:
    def __init__(self, inner):
        self._inner = inner

    def __call__(self, n: int = 1) -> None:
        if self._inner is not None:
            self._inner.update(n)

    update = __call__


@contextlib.contextmanager
def bar(label: str, total: int) -> Iterator[_Bar]:
    """``with bar("training", n) as b: b(1)``: a click progress bar, or nothing when disabled."""
    if not _enabled or total <= 0:
        yield _Bar(None)
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True, width=30) as pb:
        yield _Bar(pb)


def info(message: str) -> None:
    """A one-line status message on stderr (hidden with ``factory -q``)."""
    if _enabled:
        click.echo(message, err=True)
