"""The ID-document flow as one unit (localise -> rectify -> classify): its YAML and its canonical pair.

Its one figure is end to end: the classifier's top-1 on the localiser's crops of the test frames, so a
corner error that cuts the document off counts as the classification loss it causes. Running a chain is
``factory.device.chain`` (a device runs releases with the same code); verifying a release is
``factory.bundle.pipeline``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Key, load_config
from ..device.chain import Stage

__all__ = ["CHAIN_SCHEMA", "load_chain_config", "canonical_stage"]

CHAIN_SCHEMA = {
    "name": Key(str, help="the pipeline's name, e.g. id-docs-flow"),
    "version": Key(str, "0.1.0", "the pipeline's own semantic version (a new stage bundle is a new version)"),
    "localise": Key(str, help="canonical model directory of the document localiser (task document-localisation)"),
    "classify": Key(str, help="canonical model directory of the classifier of rectified crops"),
    "data": Key(str, help="dataset of frames with a quad and a label each (validation of the chain)"),
    "accuracy": {
        "max_drop_pt": Key(float, 1.0, "end-to-end top-1 margin vs the canonical pair, points"),
        "confidence": Key(float, 0.95, "confidence of the paired interval"),
        "inconclusive": Key(
            str, "fail", "when the test split cannot tell: fail | warn | pass", choices=["fail", "warn", "pass"]
        ),
    },
}


def load_chain_config(path) -> dict:
    """A pipeline YAML (see configs/pipelines/id-docs.yaml), validated."""
    return load_config(path, CHAIN_SCHEMA)


def canonical_stage(model_dir: str | Path) -> Stage:
    """A canonical model as a chain stage, run by ONNX Runtime on its ONNX graph (the reference)."""
    from ..train.canonical import load_canonical, onnx_logits

    m = load_canonical(model_dir)
    return Stage(lambda x: onnx_logits(m.onnx, x), m.card["preprocessing"], m.card["labels"], m.task)
