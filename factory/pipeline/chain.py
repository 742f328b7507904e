"""The ID-document flow as one unit (localise -> rectify -> classify): its YAML and its canonical pair.

Its one figure is end to end: the classifier's top-1 on the localiser's crops of the test frames, so a
corner error that cuts the document off counts as the classification loss it causes. Running a chain is
``factory.device.chain`` (a device runs releases with the same code); verifying a release is
``factory.bundle.pipeline``.
"""

from __future__ import annotations

from pathlib import Path

from ..device.chain import CHAIN_SCHEMA, Stage, load_chain_config

__all__ = ["CHAIN_SCHEMA", "load_chain_config", "canonical_stage"]


def canonical_stage(model_dir: str | Path) -> Stage:
    """A canonical model as a chain stage, run by ONNX Runtime on its ONNX graph (the reference)."""
    from ..train.canonical import load_canonical, onnx_logits

    m = load_canonical(model_dir)
    return Stage(lambda x: onnx_logits(m.onnx, x), m.card["preprocessing"], m.card["labels"], m.task)
