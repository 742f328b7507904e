"""Orchestration, the top layer: build, recipe search, publishing, the main job and the fleet demo.

These modules combine the stages below them (data, train, export, bench, bundle, registry, device)
and nothing below imports them. ``factory run`` is :func:`factory.pipeline.main.run`.
"""

from .main import PIPELINE_SCHEMA, run

__all__ = ["PIPELINE_SCHEMA", "run"]
