"""Parity of an artifact against the canonical model: every figure first, the verdict after. The
figures are the task's (:mod:`factory.tasks`); classification's are re-exported here for callers."""

from __future__ import annotations

from ..tasks.classification import parity_metrics

__all__ = ["parity_metrics"]
