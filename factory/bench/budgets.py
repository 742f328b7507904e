"""The one budget checker: build, search and gate ask it whether figures meet a target's budgets.

Every figure is measured first; :func:`check_budgets` then returns one :class:`Check` per budget the
profile sets (value, limit, verdict and the reason in words). Callers decide what a failed check
means (a failing bundle, a rejected search candidate, a red gate); none of them compares figures
to limits on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Check", "check_budgets", "failed"]


@dataclass(frozen=True)
class Check:
    """One budget: the measured value against its limit."""

    check: str  # accuracy_drop | top1_agreement | max_abs_diff | latency_p95 | size | top1
    value: float
    limit: float
    passed: bool
    op: str  # "<=" or ">="
    unit: str = ""

    @property
    def why(self) -> str:
        """The verdict in words, e.g. ``0.21 pt violates <= 0.2 pt``."""
        v = f"{self.value:.6g}{self.unit}"
        lim = f"{self.limit:g}{self.unit}"
        return f"{v} {self.op} {lim}" if self.passed else f"{v} violates {self.op} {lim}"

    def to_dict(self) -> dict:
        """JSON form for manifests and reports."""
        return asdict(self) | {"why": self.why}


def _at_most(name: str, value: float, limit: float, unit: str = "") -> Check:
    return Check(name, value, limit, value <= limit, "<=", unit)


def _at_least(name: str, value: float, limit: float, unit: str = "") -> Check:
    return Check(name, value, limit, value >= limit, ">=", unit)


def check_budgets(
    budgets: dict,
    *,
    accuracy_drop_pt: float | None = None,
    top1_agreement: float | None = None,
    max_abs_diff: float | None = None,
    tolerance: float | None = None,
    latency_p95_ms: float | None = None,
    size_mb: float | None = None,
    top1: float | None = None,
    min_top1: float | None = None,
) -> list[Check]:
    """One check per budget that is set and whose figure was measured (``None`` figures are skipped).

    ``budgets`` is a target profile's ``budgets`` section (``max_accuracy_drop_pt``,
    ``min_top1_agreement``, ``max_latency_ms`` for the p95, ``max_size_mb``); ``tolerance`` is the
    numeric parity tolerance of conversions meant to be exact; ``min_top1`` an absolute floor.
    """
    checks: list[Check] = []
    if accuracy_drop_pt is not None and budgets.get("max_accuracy_drop_pt") is not None:
        checks.append(_at_most("accuracy_drop", round(accuracy_drop_pt, 4), budgets["max_accuracy_drop_pt"], " pt"))
    if top1_agreement is not None and budgets.get("min_top1_agreement") is not None:
        checks.append(_at_least("top1_agreement", round(top1_agreement, 6), budgets["min_top1_agreement"]))
    if max_abs_diff is not None and tolerance is not None:
        checks.append(_at_most("max_abs_diff", round(max_abs_diff, 8), tolerance))
    if latency_p95_ms is not None and budgets.get("max_latency_ms") is not None:
        checks.append(_at_most("latency_p95", round(latency_p95_ms, 3), budgets["max_latency_ms"], " ms"))
    if size_mb is not None and budgets.get("max_size_mb") is not None:
        checks.append(_at_most("size", round(size_mb, 3), budgets["max_size_mb"], " MB"))
    if top1 is not None and min_top1 is not None:
        checks.append(_at_least("top1", round(top1, 6), min_top1))
    return checks


def failed(checks: list[Check]) -> list[Check]:
    """The checks that did not pass."""
    return [c for c in checks if not c.passed]
