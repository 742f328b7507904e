"""Device target profiles: ``targets/NAME.yaml``.

A profile names a runtime backend, a recipe (precision, quantization, pruning), runtime options
and budgets. Budgets live here, never in code. ``--target NAME`` reads ``targets/NAME.yaml`` from
``--targets-dir``, ``$FACTORY_TARGETS`` or ``./targets``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..config import Key, load_yaml, merge, parse_overrides, validate
from ..errors import ConfigError, UnknownNameError
from .base import PRECISIONS, backend_names, get_backend

__all__ = ["PROFILE_SCHEMA", "targets_dir", "target_names", "load_target"]


def _ratio(v) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


PROFILE_SCHEMA = {
    "name": Key(str, None, "defaults to the file name", nullable=True),
    "description": Key(str, ""),
    "backend": Key(str, help="a registered runtime backend (`factory targets` lists each profile with its backend)"),
    "device_class": Key(
        str,
        None,
        "boards of this class measure latency when the search runs on Ray: their nodes carry the resource "
        "device:<class> (e.g. rpi4)",
        nullable=True,
    ),
    "recipe": {
        "precision": Key(str, "fp32", "fp32 | fp16 | int8-static | int8-dynamic | int8-weight-only"),
        "quantization": {
            "calibration_images": Key(int, 64, "images drawn from the training split (seeded)"),
            "calibration_seed": Key(int, 0),
            "method": Key(
                str, "minmax", "calibration statistic (ONNX Runtime)", choices=["minmax", "entropy", "percentile"]
            ),
            "activation_type": Key(
                str,
                "auto",
                "ONNX Runtime static int8: auto | uint8 | int8 "
                "(auto = uint8 with reduce_range, safe and fast on every x86 CPU; int8 = S8S8, slow on x86)",
                choices=["auto", "uint8", "int8"],
            ),
            "engine": Key(
                str,
                "auto",
                "LiteRT int8: auto | ai-edge-quantizer | pt2e",
                choices=["auto", "ai-edge-quantizer", "pt2e"],
            ),
            "preset": Key(
                str,
                "performance",
                "OpenVINO int8 (NNCF): performance = symmetric activations, mixed = asymmetric",
                choices=["performance", "mixed"],
            ),
            "bias_correction": Key(str, "fast", "OpenVINO int8 (NNCF) bias correction", choices=["fast", "full"]),
            "repair": Key(
                str,
                "auto",
                "int8-static that misses its accuracy target on the validation split: auto = try cheaper fixes, "
                "then keep the most sensitive layers in float; off = ship it as quantized",
                choices=["auto", "off"],
            ),
            "keep_float": Key(list, [], "layers (runtime node names) kept in float, set by hand or by a repair"),
        },
        "pruning": {
            "method": Key(str, "none", choices=["none", "structured", "unstructured"]),
            "ratio": Key(float, 0.0, "channel (structured) or weight (unstructured) fraction removed", check=_ratio),
            "finetune_epochs": Key(int, 4, "fine-tuning epochs on the training split after pruning"),
            "finetune_lr": Key(float, 0.002),
            "distill": Key(bool, True, "fine-tune against the canonical model's outputs (knowledge distillation)"),
        },
    },
    "runtime": Key(dict, {}, "backend runtime options (threads, graph optimization...)"),
    "search": {
        "objective": Key(
            str,
            "p50_latency",
            "what the search minimizes among candidates within budget",
            choices=["p50_latency", "p95_latency", "size"],
        ),
        "space": Key(dict, {}, "override key -> candidate values, e.g. recipe.precision: [fp32, int8-static]"),
        "bench_seconds": Key(float, 30.0, "interleaved benchmark of all candidates together"),
        "budget_minutes": Key(float, 15.0, "stop building new candidates after this long"),
    },
    "budgets": {
        "max_accuracy_drop_pt": Key(float, 1.0, "top-1 drop vs the canonical model on the test split, in points"),
        "min_top1_agreement": Key(float, 0.0, "share of test images where the artifact and canonical agree"),
        "max_corner_error_increase_pct": Key(
            float, 0.5, "document localisation: corner-error increase vs the canonical model, in % of the diagonal"
        ),
        "max_map_drop_pt": Key(
            float, 1.0, "detection: mAP@0.5 drop vs the canonical model on the test split, in points"
        ),
        "on_inconclusive": Key(
            str,
            "auto",
            "what a test split too small to resolve the accuracy margin means: fail | warn | pass-if-exact | auto "
            "(pass-if-exact for fp32/fp16, fail for int8 and pruning)",
            choices=["auto", "fail", "warn", "pass-if-exact"],
        ),
        "max_latency_ms": Key(float, None, "p95 latency at batch 1 on the build host", nullable=True),
        "max_size_mb": Key(float, None, "artifact size", nullable=True),
    },
}


PACKAGED = Path(__file__).resolve().parents[1] / "defaults" / "targets"  # installed with the package


def targets_dir(explicit: str | Path | None = None) -> Path:
    """The folder of target profiles: explicit, else ``$FACTORY_TARGETS``, else ``./targets`` when the working
    folder has one, else the default profiles installed with the package (so a command run anywhere finds them)."""
    chosen = explicit or os.environ.get("FACTORY_TARGETS")
    if chosen:
        return Path(chosen)
    return Path("targets") if Path("targets").is_dir() else PACKAGED


def target_names(folder: str | Path | None = None) -> list[str]:
    """Names of the profiles in the targets folder."""
    d = targets_dir(folder)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_target(name: str, folder: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Load, override (``recipe.precision=int8-static``...) and validate a target profile."""
    path = targets_dir(folder) / f"{name}.yaml"
    if not path.is_file():
        raise UnknownNameError(
            "target",
            name,
            target_names(folder),
            hint=f"targets are YAML files in {targets_dir(folder)}/ (--targets-dir or $FACTORY_TARGETS)",
        )
    data = merge(load_yaml(path), parse_overrides(overrides))
    profile = validate(data, PROFILE_SCHEMA, str(path))
    profile["name"] = profile["name"] or name
    if profile["backend"] not in backend_names():
        raise ConfigError(
            f"{path}: unknown backend {profile['backend']!r}; valid backends: {', '.join(backend_names())}"
        )
    backend = get_backend(profile["backend"])
    caps, runtime = backend.capabilities, backend.runtime
    precision = profile["recipe"]["precision"]
    if precision not in caps.precisions:
        known = "" if precision in PRECISIONS else " (not a precision at all)"
        raise ConfigError(
            f"{path}: precision {precision!r}{known} is not supported by backend {profile['backend']!r}; "
            f"valid: {', '.join(caps.precisions)}"
        )
    unknown = sorted(set(profile["runtime"]) - set(runtime.options))
    if unknown:
        raise ConfigError(
            f"{path}: unknown runtime option(s) {unknown} for {profile['backend']}; valid: {', '.join(runtime.options)}"
        )
    profile["runtime"] = {**runtime.options, **profile["runtime"]}
    profile["source"] = str(path)
    return profile
