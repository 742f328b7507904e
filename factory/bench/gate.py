"""`factory gate`: decide from a candidate and a baseline report whether a change regressed.

Rules (each check gathers its figures first, then the policy decides):
- latency: regression when the interval of the candidate/baseline latency ratio lies wholly above
  1 + tolerance. One interleaved run (``--remeasure``, the default in CI): the statistic is the median
  of per-round ratios; its interval comes from a moving-block bootstrap over rounds (rounds are
  autocorrelated) widened by the session spread between two processes (``session_sd``, measured in
  benchmarks/results/gate-calibration.md). Separate runs: the ratio of medians, independent block
  bootstraps widened by the spread between runs (``between_run_sd``);
- accuracy: a non-inferiority test of the drop (baseline - candidate, points) against ``max_drop_pt``
  with Tango's score interval over the paired test images: pass when the upper end is within the
  margin, regression when the lower end is beyond it, otherwise inconclusive (``accuracy.inconclusive``
  says whether that fails the gate); a detection model's mAP@0.5 drop gets a paired bootstrap interval
  over the test frames both reports matched, judged by the same margin; a document localiser's
  corner-error increase gets a paired bootstrap interval over the frames both reports scored, judged
  by ``max_corner_error_increase_pct``; a pipeline release gets both: its end-to-end top-1 paired over
  the test frames, and its localiser's corner-error increase over the same frames;
- budgets: the candidate's own target-profile budgets (p95 latency, size) and an absolute top-1 floor.
"""

from __future__ import annotations

import numpy as np

from ..config import Key, load_config
from ..errors import InputError
from ..proportions import non_inferiority, z_value
from .accuracy import unpack_bits
from .budgets import check_budgets
from .stats import paired_ratio_ci, ratio_of_medians_ci

__all__ = ["POLICY_SCHEMA", "load_policy", "pair_artifacts", "evaluate_gate", "remeasure", "run_gate"]


def _fraction(v) -> str | None:
    return None if 0 < v < 1 else "must be between 0 and 1"


POLICY_SCHEMA = {
    "match": Key(str, help="how candidate and baseline artifacts are paired: target | id", choices=["target", "id"]),
    "latency": {
        "tolerance": Key(float, help="allowed slowdown as a fraction (0.10 = 10%)"),
        "confidence": Key(float, help="confidence of the ratio's interval", check=_fraction),
        "bootstrap": Key(int, 2000, "bootstrap resamples"),
        "session_sd": Key(
            float, 0.0, "log-scale spread between two processes of one artifact in one run (A/A calibration)"
        ),
        "between_run_sd": Key(
            float, 0.05, "log-scale spread between separate runs (A/A calibration); stored numbers only"
        ),
    },
    "accuracy": {
        "max_drop_pt": Key(float, help="non-inferiority margin of the top-1 drop, in points"),
        "confidence": Key(float, help="confidence of Tango's paired score interval", check=_fraction),
        "inconclusive": Key(str, "fail", "when the test split cannot tell: fail | pass", choices=["fail", "pass"]),
        "max_corner_error_increase_pct": Key(
            float, 0.5, "document localisation: margin of the corner-error increase, in % of the image diagonal"
        ),
        "bootstrap": Key(int, 2000, "unused since accuracy intervals are score intervals (kept for old policies)"),
    },
    "budgets": {
        "from_target_profile": Key(bool, True, "also enforce the p95 latency and size budgets stored in each bundle"),
        "min_top1": Key(float, None, "absolute top-1 floor", nullable=True),
    },
    "remeasure": {
        "seconds": Key(float, 10.0, "measuring time when --remeasure runs both in one interleaved run"),
        "warmup": Key(int, 20),
    },
}


def load_policy(path) -> dict:
    """A gate policy YAML, validated (see configs/gates.yaml)."""
    return load_config(path, POLICY_SCHEMA)


def _key(row: dict, match: str) -> str:
    return row["identity"].get("target") or row["id"] if match == "target" else row["id"]


def pair_artifacts(candidate: dict, baseline: dict, match: str) -> list[tuple[dict, dict]]:
    """Pair artifacts and refuse reports about different models or datasets (a usage error)."""
    base = {_key(r, match): r for r in baseline["artifacts"]}
    pairs = []
    for c in candidate["artifacts"]:
        b = base.get(_key(c, match))
        if b is None:
            continue
        if c["identity"].get("model") != b["identity"].get("model"):
            raise InputError(
                f"{_key(c, match)}: candidate is model {c['identity'].get('model')!r}, baseline "
                f"{b['identity'].get('model')!r}",
                hint="compare reports of the same model",
            )
        cd, bd = c["accuracy"].get("dataset_hash"), b["accuracy"].get("dataset_hash")
        if cd and bd and cd != bd:
            raise InputError(
                f"{_key(c, match)}: reports were measured on different datasets ({cd[:12]} vs {bd[:12]})",
                hint="benchmark both on the same test split",
            )
        pairs.append((c, b))
    if not pairs:
        raise InputError(
            f"no artifact of the candidate matches one of the baseline by {match}",
            hint=f"candidate: {[_key(r, match) for r in candidate['artifacts']]}, baseline: {list(base)}",
        )
    return pairs


def _line(check: str, name: str, passed: bool, text: str) -> dict:
    return {
        "check": check,
        "artifact": name,
        "passed": passed,
        "text": f"{'PASS' if passed else 'FAIL'} {check:8s} {name}: {text}",
    }


def _latency(name, c, b, policy, paired, settings) -> dict:
    lp = policy["latency"]
    cs, bs = np.asarray(c["latency"]["samples_ms"]), np.asarray(b["latency"]["samples_ms"])
    per_turn = settings.get("per_turn")
    if paired and cs.size == bs.size and per_turn:
        # same interleaved rounds: each round's ratio cancels the drift that hit both sides
        rounds = cs.size // per_turn  # ~1 s of rounds per block, and at least ten blocks
        block = max(1, min(int(settings.get("block_samples") or per_turn) // per_turn, rounds // 10))
        ratio, ci = paired_ratio_ci(
            cs,
            bs,
            per_turn,
            confidence=lp["confidence"],
            n_boot=lp["bootstrap"],
            block_rounds=block,
            session_sd=lp["session_sd"],
        )
        how = (
            f"median of per-round ratios, one interleaved run; {lp['confidence']:.0%} interval: moving-block "
            f"bootstrap over rounds ({block} per block) and session spread sd {lp['session_sd']:g}"
        )
    else:  # separate runs: ratio of medians, ~1 s blocks, widened by the spread between runs
        ratio, ci = ratio_of_medians_ci(
            cs,
            bs,
            confidence=lp["confidence"],
            n_boot=lp["bootstrap"],
            block=settings.get("block_samples"),
            between_run_sd=lp["between_run_sd"],
        )
        how = (
            f"ratio of medians of separate runs; {lp['confidence']:.0%} interval: independent block bootstraps "
            f"and between-run spread sd {lp['between_run_sd']:g} (re-measure with --remeasure to compare in one run)"
        )
    limit = 1 + lp["tolerance"]
    passed = not ci[0] > limit
    why = (
        "interval lies wholly above"
        if not passed
        else ("interval reaches" if ci[1] > limit else "interval stays below")
    )
    medians = f"{np.median(cs):.3f} vs {np.median(bs):.3f} ms"
    text = f"ratio {ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({medians}; {how}); {why} {limit:.3f}"
    return _line("latency", name, passed, text) | {"ratio": ratio, "ci": ci, "limit": limit}


def _map_accuracy(name, c, b, policy) -> dict | None:
    """Detection: the mAP@0.5 drop with a paired bootstrap interval over the frames both reports matched."""
    from ..tasks.detection import paired_map_drop, unpack_matches

    ap = policy["accuracy"]
    ca, ba = c["accuracy"], b["accuracy"]
    if not (ca.get("matches") and ba.get("matches")) or ca["matches"]["frames"] != ba["matches"]["frames"]:
        return _line("accuracy", name, False, "mAP@0.5: the two reports did not match the same test frames")
    r = paired_map_drop(unpack_matches(ca["matches"]), unpack_matches(ba["matches"]), confidence=ap["confidence"])
    drop, ci = r["drop_pt"], r["interval_pt"]
    verdict = "fail" if ci[0] > ap["max_drop_pt"] else "pass" if ci[1] <= ap["max_drop_pt"] else "inconclusive"
    passed = verdict == "pass" or (verdict == "inconclusive" and ap["inconclusive"] == "pass")
    text = (
        f"mAP@0.5 {r['map50']:.4f} vs {r['base_map50']:.4f} (detections scoring >= {ca['matches']['min_score']:g}): "
        f"drop {drop:+.2f} pt [{ci[0]:+.2f}, {ci[1]:+.2f}] (paired bootstrap over frames); verdict {verdict} "
        f"(margin {ap['max_drop_pt']:g} pt)"
    )
    return _line("accuracy", name, passed, text) | {"drop_pt": drop, "ci": ci, "verdict": verdict}


def _corner_accuracy(name, c, b, policy) -> dict:
    """Document localisation: the mean corner-error increase with a paired bootstrap interval over the frames
    both reports scored, against ``max_corner_error_increase_pct``."""
    from ..tasks.base import paired_bootstrap

    ap = policy["accuracy"]
    cm, bm = c["accuracy"].get("matches") or {}, b["accuracy"].get("matches") or {}
    if "corner_error_pct" not in cm or "corner_error_pct" not in bm or cm["frames"] != bm["frames"]:
        return _line("accuracy", name, False, "corner error: the two reports did not score the same test frames")
    cand, base = np.asarray(cm["corner_error_pct"]), np.asarray(bm["corner_error_pct"])
    lo, hi = paired_bootstrap(cand, base, confidence=ap["confidence"])
    increase, margin = float(cand.mean() - base.mean()), ap["max_corner_error_increase_pct"]
    verdict = "fail" if lo > margin else "pass" if hi <= margin else "inconclusive"
    passed = verdict == "pass" or (verdict == "inconclusive" and ap["inconclusive"] == "pass")
    text = (
        f"corner error {cand.mean():.3f}% vs {base.mean():.3f}% of the diagonal: increase {increase:+.3f} "
        f"[{lo:+.3f}, {hi:+.3f}] (paired bootstrap over {len(cand)} frames); verdict {verdict} (margin {margin:g})"
    )
    return _line("accuracy", name, passed, text) | {"increase_pct": increase, "ci": [lo, hi], "verdict": verdict}


def _accuracy(name, c, b, policy) -> list[dict]:
    ca, ba = c["accuracy"], b["accuracy"]
    if "stages" in ca and "stages" in ba:  # a pipeline: its end-to-end top-1, then each stage's own figure
        checks = [_top1_accuracy(f"{name} end-to-end", c, b, policy)]
        for stage in sorted(set(ca["stages"]) & set(ba["stages"])):
            sc, sb = {"accuracy": ca["stages"][stage]}, {"accuracy": ba["stages"][stage]}
            checks.append(_corner_accuracy(f"{name} {stage}", sc, sb, policy))
        return [x for x in checks if x]
    if "map50" in ca or "map50" in ba:
        return [_map_accuracy(name, c, b, policy)]
    if "corner_error_pct" in ca or "corner_error_pct" in ba:
        return [_corner_accuracy(name, c, b, policy)]
    top1 = _top1_accuracy(name, c, b, policy)
    return [top1] if top1 else []


def _top1_accuracy(name, c, b, policy) -> dict | None:
    ap = policy["accuracy"]
    ca, ba = c["accuracy"], b["accuracy"]
    if "top1" not in ca or "top1" not in ba:
        return None
    if ca.get("correct_bits") and ba.get("correct_bits") and ca["n"] == ba["n"]:
        base, cand = unpack_bits(ba["correct_bits"], ba["n"]), unpack_bits(ca["correct_bits"], ca["n"])
        r = non_inferiority(
            int((base & ~cand).sum()), int((~base & cand).sum()), ca["n"], ap["max_drop_pt"], ap["confidence"]
        )
        drop, ci, verdict, why = r["drop_pt"], r["interval_pt"], r["verdict"], r["why"]
    else:  # different splits: two independent proportions, normal approximation
        drop = 100 * (ba["top1"] - ca["top1"])
        se = 100 * np.sqrt(ba["top1"] * (1 - ba["top1"]) / ba["n"] + ca["top1"] * (1 - ca["top1"]) / ca["n"])
        z = z_value(ap["confidence"])
        ci = [drop - z * se, drop + z * se]
        verdict = "fail" if ci[0] > ap["max_drop_pt"] else "pass" if ci[1] <= ap["max_drop_pt"] else "inconclusive"
        why = f"drop {drop:+.2f} pt [{ci[0]:+.2f}, {ci[1]:+.2f}] (different test splits: unpaired)"
    passed = verdict == "pass" or (verdict == "inconclusive" and ap["inconclusive"] == "pass")
    text = f"top-1 {ca['top1']:.4f} vs {ba['top1']:.4f}: {why}; verdict {verdict} (margin {ap['max_drop_pt']:g} pt)"
    return _line("accuracy", name, passed, text) | {"drop_pt": drop, "ci": ci, "verdict": verdict}


def _budgets(name, c, policy) -> list[dict]:
    """The candidate's own profile budgets (p95, size) and the policy's top-1 floor, by the one checker."""
    budgets = (c.get("budgets") or {}) if policy["budgets"]["from_target_profile"] else {}
    checks = check_budgets(
        {k: budgets.get(k) for k in ("max_latency_ms", "max_size_mb")},
        latency_p95_ms=c["latency"]["p95_ms"],
        size_mb=c["size_bytes"] / 1e6,
        top1=c["accuracy"].get("top1"),
        min_top1=policy["budgets"]["min_top1"],
    )
    return [_line("budget", name, ch.passed, ch.why) | {"budget": ch.check} for ch in checks]


def evaluate_gate(candidate: dict, baseline: dict, policy: dict, *, paired: bool = False) -> dict:
    """Every check of every paired artifact, then the verdict: ``{passed, checks, paired}``."""
    checks = []
    settings = candidate.get("settings", {})
    for c, b in pair_artifacts(candidate, baseline, policy["match"]):
        name = _key(c, policy["match"])
        checks.append(_latency(name, c, b, policy, paired, settings))
        checks += _accuracy(name, c, b, policy)
        checks += _budgets(name, c, policy)
    return {"passed": all(x["passed"] for x in checks), "checks": checks, "paired": paired}


def remeasure(candidate: dict, baseline: dict, policy: dict) -> tuple[dict, dict]:
    """Run both sides again in one interleaved run; keep the (deterministic) accuracy figures."""
    import contextlib
    import copy

    from .artifacts import open_artifacts
    from .latency import measure_interleaved

    candidate, baseline = copy.deepcopy(candidate), copy.deepcopy(baseline)
    pairs = pair_artifacts(candidate, baseline, policy["match"])
    with contextlib.ExitStack() as stack:
        arts = []
        for side, row in [("candidate", c) for c, _ in pairs] + [("baseline", b) for _, b in pairs]:
            a = open_artifacts([row["path"]], threads=row["runtime"].get("threads") or 2, stack=stack)[0]
            a.id = f"{side}:{row['id']}"
            arts.append(a)
        lat = measure_interleaved(arts, seconds=policy["remeasure"]["seconds"], warmup=policy["remeasure"]["warmup"])
    for c, b in pairs:
        c["latency"] = lat["artifacts"][f"candidate:{c['id']}"]
        b["latency"] = lat["artifacts"][f"baseline:{b['id']}"]
    candidate["settings"] = {k: v for k, v in lat.items() if k != "artifacts"}
    return candidate, baseline


def run_gate(candidate, baseline, policy_path, *, remeasure_both: bool = False, record_missing: bool = False) -> dict:
    """Load the reports and the policy, optionally re-measure, and evaluate. Raises only usage errors."""
    from pathlib import Path

    from .report import load_report, save_baseline

    policy = load_policy(policy_path)
    cand = load_report(candidate) if not isinstance(candidate, dict) else candidate
    if record_missing and not Path(baseline).exists():
        save_baseline(cand, baseline)
        return {"passed": True, "checks": [], "recorded_baseline": str(baseline)}
    base = load_report(baseline)
    if remeasure_both:
        cand, base = remeasure(cand, base, policy)
    return evaluate_gate(cand, base, policy, paired=remeasure_both)
