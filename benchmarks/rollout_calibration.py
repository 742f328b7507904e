"""Calibrate the fleet monitor's rollout decisions: false rollbacks of healthy releases, and how fast
injected faults are rolled back, at several window sizes.

    python benchmarks/rollout_calibration.py [--manifest bundles/id-docs/0.1.0/cpu/manifest.json]
        [--rollouts 300] [--windows 30] [--sizes 60 200 1000]

Simulated with the monitor's own functions (``judge_window`` per window and target, ``decide`` per
window), the registry's defaults (configs/rollout.yaml) and the reference profile of a real bundle
(the main job's, by default). Each rollout is one stage of three targets over ``--windows`` windows;
each window holds N inferences per target on the new release (spread over N/30 devices, at least 3)
and 4N on the previous release. Inferences of a healthy release are drawn from the reference
profile's own histograms, with a 1% error rate (half the default 2% limit) and log-normal latency
(sigma 0.15, a per-device factor of sigma 0.05), the same for both releases.

Faults: ``errors``: 10% failed inferences on one of the three targets; ``slower``: every inference
30% slower; ``darker``: inputs at 35% brightness (brightness and contrast scaled, as in the demo).
Writes benchmarks/results/rollout-calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory import progress  # noqa: E402
from factory._io import atomic_write, write_json  # noqa: E402
from factory.config import load_yaml  # noqa: E402
from factory.monitor.health import DEVICE_WEIGHT_CAP, decide, judge_window, window_figures  # noqa: E402
from factory.monitor.summaries import cap_weights, combine  # noqa: E402
from factory.registry.rollouts import check_plan  # noqa: E402
from factory.stats import HISTOGRAMS, histogram  # noqa: E402

TARGETS = ("cpu", "openvino", "tflite")
FAULTS = ("errors", "slower", "darker")
BASE_ERROR, FAULT_ERROR, SLOWDOWN, DARKNESS = 0.01, 0.10, 1.3, 0.35
NEVER = {"percent": 10, "min_duration_minutes": 1e9, "min_devices_reporting": 0}  # the stage never advances


class World:
    """Draws device summaries like the ones devices upload, from a reference profile."""

    def __init__(self, profile: dict, p50_ms: float, rng: np.random.Generator):
        self.rng, self.p50 = rng, p50_ms
        self.p = {k: np.asarray(profile[k]["counts"], np.float64) for k in ("confidence", "brightness", "contrast")}
        self.p = {k: v / v.sum() for k, v in self.p.items()}
        cls = np.asarray(profile["predicted_class"]["counts"], np.float64)
        self.cls = cls / cls.sum()

    def _values(self, sig: str, n: int, scale: float) -> list:
        """n values of a signal drawn from its reference histogram (uniform within a bucket), scaled."""
        edges = np.asarray(HISTOGRAMS[sig])
        b = self.rng.choice(len(self.p[sig]), n, p=self.p[sig])
        v = edges[b] + self.rng.random(n) * (edges[b + 1] - edges[b])
        return (v * scale).tolist()

    def device(self, name: str, n: int, *, error: float, slow: float, dark: bool) -> dict:
        errors = int(self.rng.binomial(n, error))
        ok = n - errors
        factor = np.exp(self.rng.normal(0, 0.05))
        lat = self.p50 * factor * slow * np.exp(self.rng.normal(0, 0.15, ok))
        scale = DARKNESS if dark else 1.0
        return {
            "device_id": name,
            "count": n,
            "errors": errors,
            "latency_ms": np.asarray(histogram(lat, HISTOGRAMS["latency_ms"]), np.float64),
            "confidence": np.asarray(self.rng.multinomial(ok, self.p["confidence"]), np.float64),
            "predicted_class": np.asarray(self.rng.multinomial(ok, self.cls), np.float64),
            "brightness": np.asarray(histogram(self._values("brightness", n, scale), HISTOGRAMS["brightness"])),
            "contrast": np.asarray(histogram(self._values("contrast", n, scale), HISTOGRAMS["contrast"])),
        }

    def devices(self, prefix: str, n: int, k: int, **how) -> dict:
        per = np.full(k, n // k)
        per[: n - per.sum()] += 1
        return {f"{prefix}-{i}": self.device(f"{prefix}-{i}", int(c), **how) for i, c in enumerate(per)}


def rollout(world: World, reference: dict, rules: dict, n: int, windows: int, fault: str | None) -> dict:
    """One simulated stage; the window in which it was rolled back (or None) and per-window verdicts."""
    k = max(3, n // 30)
    verdicts, unhealthy = [], 0
    for w in range(windows):
        for i, target in enumerate(TARGETS):
            how = {"error": BASE_ERROR, "slow": 1.0, "dark": False}
            prev = world.devices(f"prev-{target}", 4 * n, 4 * k, **how)
            capped = cap_weights(prev, DEVICE_WEIGHT_CAP)
            prev_fig = window_figures(combine(capped), reference, capped)
            if fault == "errors" and i == 0:
                how["error"] = FAULT_ERROR
            elif fault == "slower":
                how["slow"] = SLOWDOWN
            elif fault == "darker":
                how["dark"] = True
            fig, verdict = judge_window(world.devices(f"new-{target}", n, k, **how), reference, prev_fig, rules)
            unhealthy += verdict["healthy"] is False
            verdicts.append((float(w), target, fig, verdict))
        d = decide(verdicts, rules, NEVER, 1, elapsed_min=0.0, targets=list(TARGETS))
        if d is not None and d["action"] == "rollback":
            return {"rolled_back_in": w + 1, "unhealthy_target_windows": unhealthy, "judged": 3 * (w + 1)}
    return {"rolled_back_in": None, "unhealthy_target_windows": unhealthy, "judged": 3 * windows}


def _wilson_upper(k: int, n: int, z: float = 1.645) -> float:
    p = k / n
    return ((p + z * z / (2 * n)) + z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--manifest", help="a bundle manifest with a reference profile (default: the main job's cpu bundle)"
    )
    ap.add_argument("--plan", default=str(ROOT / "configs" / "rollout.yaml"), help="rollout plan with the health rules")
    ap.add_argument("--rollouts", type=int, default=300)
    ap.add_argument("--windows", type=int, default=30, help="windows per healthy stage")
    ap.add_argument("--fault-windows", type=int, default=10, help="windows a faulty release is given")
    ap.add_argument("--sizes", type=int, nargs="+", default=[60, 200, 1000], help="inferences per window and target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rollout-calibration"))
    args = ap.parse_args()
    path = args.manifest or next(
        iter(sorted(glob.glob(str(ROOT / "bundles" / "*" / "*" / "cpu" / "manifest.json")))), None
    )
    if path is None:
        sys.exit("no bundle manifest found: run `make run` first or pass --manifest")
    manifest = json.loads(Path(path).read_text())
    reference = {"profile": manifest["reference_profile"]}
    rules = check_plan(load_yaml(args.plan), args.plan)["health"]
    world = World(manifest["reference_profile"], float(manifest["latency"]["p50_ms"]), np.random.default_rng(args.seed))
    t0 = time.time()
    rows = []
    cases = [(None, n) for n in args.sizes] + [(f, n) for f in FAULTS for n in args.sizes]
    with progress.bar("simulated rollouts", len(cases) * args.rollouts) as bar:
        for fault, n in cases:
            runs = []
            for _ in range(args.rollouts):
                runs.append(
                    rollout(world, reference, rules, n, args.windows if fault is None else args.fault_windows, fault)
                )
                bar.update(1)
            back = [r["rolled_back_in"] for r in runs if r["rolled_back_in"] is not None]
            row = {
                "case": fault or "healthy",
                "inferences_per_window": n,
                "rollouts": len(runs),
                "rolled_back": len(back),
                "share_rolled_back": len(back) / len(runs),
                "unhealthy_window_share": sum(r["unhealthy_target_windows"] for r in runs)
                / sum(r["judged"] for r in runs),
                "windows_to_rollback": {
                    "median": float(np.median(back)) if back else None,
                    "p99": float(np.percentile(back, 99)) if back else None,
                    "max": max(back) if back else None,
                },
            }
            if fault is None:
                row["false_rollback_upper_95"] = float(_wilson_upper(len(back), len(runs)))
            rows.append(row)
    result = {
        "manifest": str(path),
        "reference_images": int(sum(manifest["reference_profile"]["brightness"]["counts"])),
        "rules": rules,
        "rollouts": args.rollouts,
        "healthy_windows": args.windows,
        "fault_windows": args.fault_windows,
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    lines = [
        "# Rollout decisions: false rollbacks and detection",
        "",
        f"`python benchmarks/rollout_calibration.py` ({args.rollouts} simulated rollouts per row, three targets, "
        f"reference profile of {result['reference_images']} images, rules of configs/rollout.yaml: alpha "
        f"{rules['alpha']}, {rules['windows_to_halt']} windows to halt, {result['seconds']} s).",
        "",
        "| case | inferences / window / target | rolled back | unhealthy target-windows | windows to roll back "
        "(median / p99 / max) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["windows_to_rollback"]
        spans = "-" if w["median"] is None else f"{w['median']:.0f} / {w['p99']:.0f} / {w['max']}"
        share = f"{r['rolled_back']}/{r['rollouts']} ({r['share_rolled_back']:.1%})"
        if r["case"] == "healthy":
            share += f", upper 95% bound {r['false_rollback_upper_95']:.1%} over {args.windows} windows"
        lines.append(
            f"| {r['case']} | {r['inferences_per_window']} | {share} | {r['unhealthy_window_share']:.2%} | {spans} |"
        )
    atomic_write(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
