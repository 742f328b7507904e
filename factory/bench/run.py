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
        _postprocess_times(artifacts, lat)
        return assemble(artifacts, lat, acc)


def _postprocess_times(artifacts, lat: dict) -> None:
    """After the interleaved run (not inside it: the post-processing is the same NumPy code for every
    runtime), each task model's post-processing time per frame on its own outputs, and model plus
    post-processing: what an application waits for."""
    import numpy as np

    from ..tasks import get_task
    from .quick import postprocess_latency

    for a in artifacts:
        if a.task in ("classification", "pipeline") or a.output is None:
            continue
        raw = a.extra.get("raw_sample")
        if raw is None:
            raw = a.runner(np.zeros(a.input_shape, np.float32))
        row = lat["artifacts"][a.id]
        row |= postprocess_latency(get_task(a.task, a.output), raw)
        if "postprocess_p50_ms" in row:
            row["end_to_end_p50_ms"] = round(row["p50_ms"] + row["postprocess_p50_ms"], 4)
