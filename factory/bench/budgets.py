"""The one budget checker: build, search and gate ask it whether figures meet a target's budgets.

Every figure is measured first; :func:`check_budgets` then returns one :class:`Check` per budget the
profile sets, with its value, limit, interval where it has one, verdict (``pass``, ``fail`` or
``inconclusive``) and the reason in words. Accuracy is judged on the test split's evidence, not on a
point estimate: the drop against the canonical model is a non-inferiority test with a margin, top-1
agreement a floor on a score interval (:mod:`factory.bench.proportions`). Callers decide what a check
that did not pass means (a failing bundle, a candidate that is not feasible, a red gate); none of
them compares figures to limits on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..proportions import at_least, non_inferiority, tango_interval, wilson_interval, z_value

__all__ = [
    "Check",
    "check_budgets",
    "parity_evidence",
    "task_quality",
    "failed",
    "unresolvable",
    "judge",
    "budgets_for",
    "INCONCLUSIVE_RULES",
    "CONFIDENCE",
]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Check:
    """One budget: the measured value against its limit, and the verdict."""

    check: str  # accuracy_drop | top1_agreement | max_abs_diff | latency_p95 | size | top1
    value: float
    limit: float
    verdict: str  # pass | fail | inconclusive
    op: str  # "<=" or ">="
    unit: str = ""
    interval: list[float] | None = None
    rule: str = "point value against the limit"
    note: str = field(default="", compare=False)

    @property
    def passed(self) -> bool:
        """True only for ``pass``: an inconclusive check does not meet its budget."""
        return self.verdict == "pass"

    @property
    def why(self) -> str:
        """The verdict in words, e.g. ``0.21 pt violates <= 0.2 pt``."""
        if self.note:
            return self.note
        v, lim = f"{self.value:.6g}{self.unit}", f"{self.limit:g}{self.unit}"
        return f"{v} {self.op} {lim}" if self.passed else f"{v} violates {self.op} {lim}"

    def to_dict(self) -> dict:
        """JSON form for manifests and reports."""
        d = asdict(self)
        d.pop("note")
        return d | {"passed": self.passed, "why": self.why}


def _point(name: str, value: float, limit: float, op: str, unit: str = "") -> Check:
    ok = value <= limit if op == "<=" else value >= limit
    return Check(name, value, limit, "pass" if ok else "fail", op, unit)


def check_budgets(
    budgets: dict,
    *,
    paired: tuple[int, int, int] | None = None,
    agreement: tuple[int, int] | None = None,
    max_abs_diff: float | None = None,
    tolerance: float | None = None,
    latency_p95_ms: float | None = None,
    size_mb: float | None = None,
    top1: float | None = None,
    min_top1: float | None = None,
    metric_interval: tuple | None = None,
    confidence: float = CONFIDENCE,
) -> list[Check]:
    """One check per budget that is set and whose evidence was measured (``None`` is skipped).

    ``budgets`` is a target profile's ``budgets`` section (``max_accuracy_drop_pt``,
    ``min_top1_agreement``, ``max_latency_ms`` for the p95, ``max_size_mb``). ``paired`` is
    ``(lost, gained, n)`` against the reference on the same images; ``agreement`` is
    ``(agreeing, n)``; ``tolerance`` is the numeric parity tolerance of exact conversions;
    ``min_top1`` an absolute floor. ``metric_interval`` is a task metric's change against the canonical
    model with its paired bootstrap interval, as :func:`parity_evidence` makes it: (check name, value,
    interval, budget key, unit, words), e.g. detection's mAP@0.5 drop against ``max_map_drop_pt``.
    """
    checks: list[Check] = []
    if paired is not None and budgets.get("max_accuracy_drop_pt") is not None:
        r = non_inferiority(*paired, budgets["max_accuracy_drop_pt"], confidence)
        checks.append(
            Check(
                "accuracy_drop",
                round(r["drop_pt"], 4),
                budgets["max_accuracy_drop_pt"],
                r["verdict"],
                "<=",
                " pt",
                [round(v, 4) for v in r["interval_pt"]],
                r["rule"],
                r["why"],
            )
        )
    if agreement is not None and budgets.get("min_top1_agreement"):
        r = at_least(*agreement, budgets["min_top1_agreement"], confidence)
        checks.append(
            Check(
                "top1_agreement",
                round(r["value"], 6),
                budgets["min_top1_agreement"],
                r["verdict"],
                ">=",
                "",
                [round(v, 6) for v in r["interval"]],
                r["rule"],
                r["why"],
            )
        )
    if metric_interval is not None:  # a task metric's change with a paired bootstrap interval (see factory.tasks)
        name, value, (lo, hi), key, unit, what = metric_interval
        limit = budgets.get(key)
        if limit is not None:
            verdict = "fail" if lo > limit else "pass" if hi <= limit else "inconclusive"
            checks.append(
                Check(
                    name,
                    round(value, 4),
                    limit,
                    verdict,
                    "<=",
                    unit,
                    [round(lo, 4), round(hi, 4)],
                    f"paired bootstrap interval of the {what} against the limit",
                    f"{what} {value:+.2f}{unit} [{lo:+.2f}, {hi:+.2f}]: "
                    + {
                        "pass": "interval within",
                        "fail": "interval wholly above",
                        "inconclusive": "interval straddles",
                    }[verdict]
                    + f" {limit:g}",
                )
            )
    if max_abs_diff is not None and tolerance is not None:
        checks.append(_point("max_abs_diff", round(max_abs_diff, 8), tolerance, "<="))
    if latency_p95_ms is not None and budgets.get("max_latency_ms") is not None:
        checks.append(_point("latency_p95", round(latency_p95_ms, 3), budgets["max_latency_ms"], "<=", " ms"))
    if size_mb is not None and budgets.get("max_size_mb") is not None:
        checks.append(_point("size", round(size_mb, 3), budgets["max_size_mb"], "<=", " MB"))
    if top1 is not None and min_top1 is not None:
        checks.append(_point("top1", round(top1, 6), min_top1, ">="))
    return checks


def parity_evidence(parity: dict) -> dict:
    """The accuracy evidence of a parity report, as :func:`check_budgets` takes it (by the task's figures)."""
    from ..tasks import quality_of

    q = quality_of(parity)
    if q.interval:
        return {"metric_interval": (q.check, parity[q.loss], parity[q.interval], q.budget, q.unit, q.words)}
    n = parity["n"]
    return {"paired": (parity["lost"], parity["gained"], n), "agreement": (n - parity["disagreements"], n)}


def task_quality(parity: dict) -> dict:
    """A parity report's headline figure and its loss against the canonical model, whatever the task:
    ``{"name", "value", "loss", "check", "words"}`` (loss in points, higher is worse; ``check``: the budget check
    that judges it). Search ranks and plots candidates by this loss."""
    from ..tasks import quality_of

    q = quality_of(parity)
    return {"name": q.name, "value": parity[q.value], "loss": parity[q.loss], "check": q.check, "words": q.words}


def failed(checks: list[Check]) -> list[Check]:
    """The checks that did not pass (failed or inconclusive)."""
    return [c for c in checks if not c.passed]


INCONCLUSIVE_RULES = ("auto", "fail", "warn", "pass-if-exact")


def budgets_for(budgets: dict, task: str) -> dict:
    """The budgets that judge a model of ``task`` (for reports): another task's quality budget is left out
    (a classifier's report has no ``max_map_drop_pt``), and top-1 agreement belongs to classification."""
    from ..tasks import get_task, task_names

    own = get_task(task).quality.budget
    others = {get_task(n).quality.budget for n in task_names()} - {own}
    if task != "classification":
        others.add("min_top1_agreement")
    return {k: v for k, v in budgets.items() if k not in others}


def judge(checks: list[Check], rule: str = "auto", *, exact: bool, strict: bool) -> dict:
    """Whether a bundle meets its budgets, and what an inconclusive accuracy verdict (a test split too small to
    resolve the margin) counts as under ``rule`` (a profile's ``budgets.on_inconclusive``):

    - ``fail``: it does not meet them; ``warn``: it does, with the verdict recorded and shown;
    - ``pass-if-exact``: it does when the conversion is numerically exact (the output parity check passed);
    - ``auto`` (default): ``pass-if-exact`` for fp32/fp16 exports, ``fail`` for int8 and pruned models
      (``strict``), whose accuracy is what the interval exists to judge.

    A failed check always fails. Returns ``{"passed", "rule", "inconclusive": [check names], "why"}``."""
    resolved = ("fail" if strict else "pass-if-exact") if rule == "auto" else rule
    missed = failed(checks)
    unsure = [c.check for c in missed if c.verdict == "inconclusive"]
    if any(c.verdict == "fail" for c in missed) or not unsure:
        return {"passed": not missed, "rule": resolved, "inconclusive": unsure, "why": None}
    if resolved == "warn":
        ok, why = True, "accepted by budgets.on_inconclusive=warn"
    elif resolved == "pass-if-exact":
        ok = exact
        why = (
            "accepted: the outputs match the canonical model within the numeric tolerance"
            if exact
            else ("not accepted: the conversion is not numerically exact (pass-if-exact)")
        )
    else:
        ok, why = False, "not accepted: " + ("int8 and pruned models are judged strictly" if rule == "auto" else "fail")
    return {"passed": ok, "rule": resolved, "inconclusive": unsure, "why": f"inconclusive {', '.join(unsure)}; {why}"}


WAYS_OUT = (
    "widen the margin (--set budgets.max_accuracy_drop_pt=N), judge on more images (a larger test split), "
    "or choose what an inconclusive verdict does (--set budgets.on_inconclusive=fail|warn|pass-if-exact)"
)


def unresolvable(budgets: dict, n: int, confidence: float = CONFIDENCE) -> str | None:
    """Why a test split of ``n`` images cannot judge *any* candidate at these budgets (even a perfect
    one, with no image disagreeing), or None. Checked before anything is built."""
    margin, floor = budgets.get("max_accuracy_drop_pt"), budgets.get("min_top1_agreement")
    z2 = z_value(confidence) ** 2
    if margin is not None and margin <= 0:  # an interval's upper end is above 0 on any finite split
        return f"a {margin:g} pt accuracy margin cannot be shown on any test split (no interval is that narrow)"
    if margin is not None and 100 * tango_interval(0, 0, n, confidence)[1] > margin:
        need = int(z2 * (100 / margin - 1)) + 1
        return (
            f"{n} test images cannot resolve a {margin:g} pt accuracy margin even with no image lost; "
            f"about {need:,} would"
        )
    if floor and wilson_interval(n, n, confidence)[0] < floor:
        need = int(z2 * floor / (1 - floor)) + 1 if floor < 1 else None
        return f"{n} test images cannot show top-1 agreement >= {floor:g} even when every prediction agrees" + (
            f"; about {need:,} would" if need else ""
        )
    return None
