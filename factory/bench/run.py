"""One benchmark run: open the artifacts, measure accuracy, then latency interleaved; the report dict."""

from __future__ import annotations

import contextlib

from ..bundle.signing import load_public_key
from .accuracy import measure_accuracy
from .artifacts import open_artifacts
from .latency import measure_interleaved
from .report import assemble

__all__ = ["run_bench"]


def run_bench(
    paths,
    *,
    data=None,
    seconds=10.0,
    rounds=100_000,
    warmup=20,
    threads=2,
    input_shape=None,
    pubkey=None,
    accuracy=True,
) -> dict:
    """Open the inputs, measure accuracy (unless told not to), then latency in one interleaved run."""
    key = load_public_key(pubkey) if pubkey else None
    with contextlib.ExitStack() as stack:
        artifacts = open_artifacts(list(paths), threads=threads, input_shape=input_shape, public_key=key, stack=stack)
        acc = measure_accuracy(artifacts, data=data) if accuracy else {}
        lat = measure_interleaved(artifacts, seconds=seconds, max_rounds=rounds, warmup=warmup)
        return assemble(artifacts, lat, acc)
