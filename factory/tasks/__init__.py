"""Tasks: what a model is for, declared once and used by every stage.

A task (one module per task in this package, registered by name like the export backends) declares:

- ``annotation``: what a dataset record must carry (a label; a document's quad; boxes);
- the model's raw output (``output``) and how a torch head and loss are built for it (lazily: the
  device side never imports torch);
- ``targets``: training/evaluation targets from dataset records;
- ``postprocess``: raw model outputs -> task outputs, in NumPy/OpenCV, the one implementation that
  runners, the benchmark, the device agent and the MLflow pyfunc share;
- ``metrics`` and the ``primary`` metric budgets and gates judge;
- ``parity``: a candidate's outputs against the canonical model's on the same images, with the paired
  evidence budgets decide on, and ``loss_interval``: the loss, its interval and the budget key the int8
  repair and the budgets judge it by;
- ``device_output`` (what the agent returns for a frame), ``records`` (the MLflow pyfunc's answer);
- ``outcomes``, ``telemetry_classes`` and ``reference_profile``: what a device counts per inference
  (confidence, class, objects and box areas) and the validation split's same counts, the baseline of
  drift monitoring;
- for training: ``head``, ``loss``, and the ``points`` a geometric augmentation moves.

The model's output geometry (a detector's grid and class count) comes from the card's ``output`` block:
``get_task(name, card["output"])``.

``classification`` is the task every model had before tasks existed (and the default when a card names
none); ``document-localisation`` finds one document's four corners in a frame; ``detection`` finds zero
or more objects of several classes, each with its box.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import UnknownNameError
from .base import Quality, Task

__all__ = ["Task", "Quality", "register_task", "get_task", "task_names", "quality_of", "DEFAULT_TASK"]

DEFAULT_TASK = "classification"
_REGISTRY: dict[str, type[Task]] = {}
_discovered = False


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task findable by its ``name`` (it must say how its quality is judged)."""
    if not isinstance(getattr(cls, "quality", None), Quality):
        raise TypeError(f"task {cls.name!r} sets no quality (factory.tasks.Quality): budgets could not judge it")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    from .. import tasks

    for info in pkgutil.iter_modules(tasks.__path__):
        if info.name != "base" and not info.name.startswith("_"):  # _torch_heads: torch, for training only
            importlib.import_module(f"{tasks.__name__}.{info.name}")


def task_names() -> list[str]:
    """Every registered task, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_task(name: str | None, spec: dict | None = None) -> Task:
    """The task called ``name`` (None: classification, what a card without a task was trained for), for a
    model whose raw output the card's ``output`` block ``spec`` describes (detection needs its grid)."""
    _discover()
    name = name or DEFAULT_TASK
    if name not in _REGISTRY:
        raise UnknownNameError("task", name, task_names(), hint="set model.task in the training config")
    return _REGISTRY[name](spec)


def quality_of(parity: dict) -> Quality:
    """The :class:`Quality` of the task whose parity report this is (the task whose loss key it carries)."""
    _discover()
    for cls in _REGISTRY.values():
        if cls.name != DEFAULT_TASK and cls.quality.loss in parity:
            return cls.quality
    return _REGISTRY[DEFAULT_TASK].quality
