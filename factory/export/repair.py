"""Accuracy repair for int8: when a quantized artifact misses its margin, find why and fix it.

The order is the one an engineer would follow by hand, cheapest first:

1. the recipe as configured;
2. the backend's cheaper fixes, one at a time (more calibration images, another range estimator,
   full bias correction...): :meth:`Backend.cheap_fixes`;
3. the layers responsible kept in float: every quantizable layer (:meth:`Backend.quantizable_layers`)
   is kept in float once, with the runtime's own mechanism (``keep_float``: excluded nodes in ONNX
   Runtime, an NNCF ignored scope in OpenVINO, a no-quantize recipe entry in ai-edge-quantizer), and
   ranked by how much the output error against the fp32 export falls (:func:`rank_layers`); a model
   with more than ``MAX_GROUPS`` such layers is ranked in that many contiguous groups in graph order,
   so the ranking costs at most ``MAX_GROUPS`` quantizations; then the top 1, 2, 4, 8... are kept in
   float together until the artifact is within the target (at most half of the layers: beyond that
   it is not an int8 model any more).

Every attempt is judged on the **validation** split (never the test split, which the build's budgets
judge afterwards) against the canonical model, by the rule the test split will apply: the images lost
and gained on the validation split, at the same rates on as many images as the test split holds, must
give a drop interval (Tango's, as the budgets use) whose upper end is within the margin, and the
agreement must be within half the allowed disagreement. A point estimate within the margin is not
enough: a candidate that flips many images both ways has a wide interval that the test split cannot
resolve, and the repair goes on until the flips are few. Every attempt, the ranking and what worked
are returned as facts for the manifest; the repaired recipe (``keep_float`` and the options that
worked) is an ordinary recipe. A task with its own metric (detection, document localisation) is judged
the same way by :func:`task_judge`: its paired bootstrap interval of the loss, narrowed to the test
split's size, must lie within the task's budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import progress
from ..errors import ExportError
from ..proportions import tango_interval

__all__ = ["ValidationSet", "judge", "task_judge", "rank_layers", "repair_quantization", "quick_compare"]

MAX_KEPT_SHARE = 0.5  # keep at most this share of the quantizable layers in float (beyond: not int8 any more)
PROBE_IMAGES = 64  # validation images the layer ranking compares outputs on
MAX_GROUPS = 16  # more layers than this are ranked in this many contiguous groups (one quantization per group)


@dataclass
class ValidationSet:
    """The validation split with the canonical model's predictions on it."""

    x: np.ndarray
    y: np.ndarray
    reference: np.ndarray  # canonical logits
    n_test: int = 0  # images in the test split the budgets will judge on (0: as many as here)


def judge(logits: np.ndarray, val: ValidationSet, budgets: dict) -> dict:
    """Drop and agreement of an artifact against the canonical model on the validation split; the drop's
    interval projected onto the test split's size (the same loss and gain rates on ``n_test`` images);
    and whether that is within the repair target (projected upper end within the margin, half the
    allowed disagreement)."""
    pred, ref = logits.argmax(1), val.reference.argmax(1)
    ok_ref, ok = ref == val.y, pred == val.y
    n = len(val.y)
    lost, gained = int((ok_ref & ~ok).sum()), int((~ok_ref & ok).sum())
    disagree = int((pred != ref).sum())
    m = max(val.n_test, n)
    lo, hi = tango_interval(lost * m / n, gained * m / n, m)
    margin, floor = budgets.get("max_accuracy_drop_pt"), budgets.get("min_top1_agreement")
    within = (margin is None or 100 * hi <= margin) and (not floor or disagree / n <= (1 - floor) / 2)
    return {
        "n": n,
        "metric": "top-1 drop",
        "budget": "max_accuracy_drop_pt",
        "lost": lost,
        "gained": gained,
        "drop_pt": round(100.0 * (lost - gained) / n, 4),
        "projected_interval_pt": [round(100 * lo, 4), round(100 * hi, 4)],
        "projected_to": m,
        "agreement": round(1 - disagree / n, 6),
        "within_target": bool(within),
    }


def task_judge(task) -> Callable[[np.ndarray, ValidationSet, dict], dict]:
    """:func:`judge` for a task judged by its own metric (detection's mAP@0.5 drop, localisation's corner
    error): the task's paired bootstrap interval of the loss on the validation split, its half-widths
    shrunk by sqrt(n_val / n_test) to the test split's size, within the task's budget."""

    def judge_task(raw: np.ndarray, val: ValidationSet, budgets: dict) -> dict:
        loss, (lo, hi), key = task.loss_interval(task.parity(raw, val.reference, val.y))
        n = len(val.y)
        m = max(val.n_test, n)
        shrink = float(np.sqrt(n / m))
        lo, hi = loss - (loss - lo) * shrink, loss + (hi - loss) * shrink
        limit = budgets.get(key)
        return {
            "n": n,
            "metric": task.quality.words,
            "budget": key,
            "drop_pt": round(float(loss), 4),
            "projected_interval_pt": [round(float(lo), 4), round(float(hi), 4)],
            "projected_to": m,
            "agreement": None,
            "within_target": bool(limit is None or hi <= limit),
        }

    return judge_task


def _score(v: dict) -> tuple:
    # within the target first; then the smallest plausible drop (the projected upper end weighs the flips
    # both ways, where the point estimate would reward a lucky candidate that flips many images)
    return (v["within_target"], -v["projected_interval_pt"][1], v["agreement"] or 0.0)


def _logits(runner, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([runner(x[i : i + batch]) for i in range(0, len(x), batch)])


def repair_quantization(
    quantize: Callable[[dict, Path], tuple[Path, dict]],
    load: Callable[[Path], Callable],
    *,
    fp32: Path,
    options: dict,
    work: Path,
    val: ValidationSet,
    budgets: dict,
    cheap_fixes: list[tuple[str, dict]],
    layers: Callable[[], list[str]],
    keep_float_options: Callable[[dict], dict] = lambda opts: opts,
    judge: Callable[[np.ndarray, ValidationSet, dict], dict] = judge,
) -> tuple[Path, dict]:
    """Quantize as configured; if the validation split says it misses the target, try the cheaper fixes,
    then keep the most sensitive layers in float. Returns the chosen artifact and its facts, with the
    repair's record under ``repair``: target, every attempt, the ranking, what worked, and (when the
    recipe changed) the indicative latency of the fp32 export, the unrepaired and the repaired int8."""
    attempts: list[dict] = []
    tried: list[Path | None] = []  # the artifact of each attempt (None: the quantizer failed)
    best: tuple | None = None  # (score, artifact, facts, options)
    errors: list[Exception] = []

    def attempt(fix: str, opts: dict) -> bool:
        nonlocal best
        folder = work / f"repair-{len(attempts)}"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            artifact, facts = quantize(opts, folder)
            v = judge(_logits(load(artifact), val.x), val, budgets)
        except (ExportError, RuntimeError, ValueError) as exc:  # a quantizer that cannot make this model
            errors.append(exc)
            attempts.append({"fix": fix, "error": str(exc)[:500], "seconds": round(time.perf_counter() - started, 1)})
            tried.append(None)
            progress.info(f"  repair: {fix}: failed: {str(exc).splitlines()[0][:200]}")
            return False
        attempts.append({"fix": fix, "val": v, "seconds": round(time.perf_counter() - started, 1)})
        tried.append(artifact)
        lo, hi = v["projected_interval_pt"]
        agreement = f", agreement {v['agreement']:.4f}" if v["agreement"] is not None else ""
        progress.info(
            f"  repair: {fix}: validation {v.get('metric', 'drop')} {v['drop_pt']:+.2f} pt (on {v['projected_to']} "
            f"images: [{lo:+.2f}, {hi:+.2f}]){agreement}" + (" (within target)" if v["within_target"] else "")
        )
        if best is None or _score(v) > best[0]:
            best = (_score(v), artifact, facts, opts)
        return v["within_target"]

    target = {
        "split": "val",
        "rule": "the drop interval at the validation rates on the test split's size lies within the margin"
        if judge is globals()["judge"]
        else "the task metric's bootstrap interval, narrowed to the test split's size, lies within its budget",
        "max_drop_upper_pt": budgets.get("max_accuracy_drop_pt"),
        "min_agreement": None if not budgets.get("min_top1_agreement") else 1 - (1 - budgets["min_top1_agreement"]) / 2,
    }
    facts = {"target": target, "attempts": attempts, "worked": None}

    def done() -> tuple[Path, dict]:
        if best is None:  # no fix made a model at all: the first failure says why (stage, operator)
            raise errors[0]
        chosen = best[1]
        if chosen != tried[0]:  # the recipe changed: what did it cost?
            compared = {"fp32_export": fp32, "int8_as_configured": tried[0], "int8_repaired": chosen}
            facts["latency_ms"] = quick_compare(load, {k: v for k, v in compared.items() if v is not None}, val.x)
        facts["chosen"] = attempts[tried.index(chosen)]["fix"]
        return chosen, best[2] | {"keep_float": list(best[3].get("keep_float") or []), "repair": facts}

    if attempt("as configured", options):
        facts["worked"] = "as configured"
        return done()
    if options.get("repair", "auto") == "off":
        return done()
    for fix, overrides in cheap_fixes:
        if attempt(fix, {**options, **overrides}):
            facts["worked"] = fix
            return done()
    if tried[0] is None:  # the configured quantizer cannot make this model: keeping layers in float cannot help
        return done()

    base_opts = keep_float_options(best[3])  # the best so far: a cheap fix that helped stays (if it can keep float)
    names = [n for n in layers() if n not in (base_opts.get("keep_float") or [])]
    groups = [list(g) for g in np.array_split(np.array(names, dtype=object), min(MAX_GROUPS, len(names))) if len(g)]
    ranking = rank_layers(quantize, load, groups, base_opts, fp32, val.x[:PROBE_IMAGES], work / "rank")
    facts["sensitivity"] = [{"layers": group, "error": round(float(err), 6)} for group, err in ranking[:20]]
    facts["quantizable_layers"] = len(names)
    unit = "layer" if all(len(g) == 1 for g in groups) else f"group of ~{len(names) // len(groups)} layers"
    limit = max(1, int(len(ranking) * MAX_KEPT_SHARE))
    k = 1
    while True:
        keep = sorted(set(base_opts.get("keep_float") or []) | {n for group, _ in ranking[:k] for n in group})
        fix = f"keep the {k} most sensitive {unit}(s) in float"
        if attempt(fix, {**base_opts, "keep_float": keep}):
            facts["worked"] = fix
            break
        if k >= limit:
            break
        k = min(k * 2, limit)
    return done()


def _relative_error(logits: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean((logits - reference) ** 2) / max(float(np.mean(reference**2)), 1e-12))


def rank_layers(
    quantize: Callable[[dict, Path], tuple[Path, dict]],
    load: Callable[[Path], Callable],
    groups: list[list[str]],
    options: dict,
    fp32: Path,
    probe: np.ndarray,
    work: Path,
) -> list[tuple[list[str], float]]:
    """Each group of quantizable layers' sensitivity (a group is often one layer): how much the int8
    model's output error (relative squared error of the logits against the fp32 export, on ``probe``
    validation images) falls when that group is kept in float with the runtime's own mechanism. Most
    sensitive first."""
    reference = _logits(load(fp32), probe)

    def error(opts: dict, folder: Path) -> float:
        folder.mkdir(parents=True, exist_ok=True)
        artifact, _ = quantize(opts, folder)
        return _relative_error(_logits(load(artifact), probe), reference)

    base_keep = list(options.get("keep_float") or [])
    base = error(options, work / "base")
    ranking = []
    with progress.bar(f"ranking {len(groups)} layer groups (each kept in float once)", len(groups)) as tick:
        for i, group in enumerate(groups):
            ranking.append((group, base - error({**options, "keep_float": [*base_keep, *group]}, work / str(i))))
            tick(1)
    return sorted(ranking, key=lambda r: -r[1])


def quick_compare(load: Callable[[Path], Callable], paths: dict[str, Path], x: np.ndarray, rounds: int = 15) -> dict:
    """Indicative p50 latency (ms, batch 1) of a few artifacts, interleaved in one process: what a repair
    cost against the unrepaired int8 and the fp32 export. The search's interleaved benchmark decides."""
    runners = {k: load(p) for k, p in paths.items()}
    one = x[:1]
    for r in runners.values():
        for _ in range(5):
            r(one)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            for _ in range(5):
                t0 = time.perf_counter()
                r(one)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(float(np.median(v)), 4) for k, v in times.items()}
