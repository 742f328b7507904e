"""Any architecture, every runtime: train torchvision classifiers of many families, build each for the three
runtimes in fp32 and int8-static (with the accuracy repair), and measure what each cell costs and saves.

    python benchmarks/arch_sweep.py [--data sweep/data] [--size 64] [--epochs 8] [--arch NAME ...]

The data: a synthetic set of its own (made when ``--data`` does not exist yet): 800 photos per class, split
so the test split (~3,700 images) can resolve the 1.0 pt margin and the validation split (~1,300) can guide
the repair, while the training split stays the main job's size (~1,400). For every architecture: `factory
train` at a small input size (from scratch: nothing is downloaded; a few architectures get their own
learning rate or epochs, listed in TRAIN_OVERRIDES and in the results), then `factory build` for cpu,
openvino and tflite at fp32 and at int8-static, each target isolated (a failure is recorded with its stage
and operator and the sweep goes on; a LiteRT model the XNNPACK delegate cannot prepare is built again with
the documented fallback, ``runtime.delegate: none``, and both are recorded), then one interleaved latency
run per runtime of its fp32 and int8 bundles. Accuracy is judged on the test split by the non-inferiority
rule of the budgets (1.0 pt margin). Resumable: finished cells are kept in the JSON and skipped on a re-run.
Writes benchmarks/results/arch-sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory import progress  # noqa: E402
from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

# (architecture, family): depthwise, shuffle, squeeze-excitation, fire, residual, RegNet, EfficientNet, NAS, dense,
# inception, ConvNeXt
ARCHITECTURES = [
    ("mobilenet_v2", "depthwise-separable, inverted residual"),
    ("mobilenet_v3_small", "depthwise + squeeze-excitation + hard-swish"),
    ("shufflenet_v2_x0_5", "channel shuffle"),
    ("squeezenet1_1", "fire modules"),
    ("resnet18", "residual"),
    ("regnet_x_400mf", "RegNet (grouped convs)"),
    ("regnet_y_400mf", "RegNet-Y (squeeze-excitation)"),
    ("efficientnet_b0", "EfficientNet (MBConv, SiLU, SE)"),
    ("mnasnet0_5", "NAS depthwise"),
    ("googlenet", "inception"),
    ("convnext_tiny", "ConvNeXt (LayerNorm, GELU)"),
    ("densenet121", "dense connections"),
]
# Architectures that do not learn at the defaults (lr 0.003, AdamW) in a short run from scratch at 64x64
TRAIN_OVERRIDES = {
    # at 0.003 its ReLU features die in the first epoch (chance accuracy); at 0.0005 it learns, more slowly
    "squeezenet1_1": {"train.lr": 0.0005, "train.epochs": 12},
}
SYNTH = {"per_class": 800, "size": (160, 120), "split": {"train": 0.225, "val": 0.2, "test": 0.575}}
TARGETS = ("cpu", "openvino", "tflite")
PRECISIONS = ("fp32", "int8-static")


def _train(arch: str, args, out: Path) -> dict:
    from factory.config import load_config
    from factory.train.loop import train
    from factory.train.schema import TRAIN_SCHEMA

    own = {"train.epochs": args.epochs} | TRAIN_OVERRIDES.get(arch, {})
    overrides = (
        f"data.manifest={args.data}/dataset.json",
        f"model.architecture={arch}",
        f"model.name=sweep-{arch.replace('_', '-')}",
        f"model.image_size=[{args.size}, {args.size}]",
        f"output.dir={out}",
        "tracking.log_model=false",
        *(f"{k}={v}" for k, v in own.items()),
    )
    started = time.perf_counter()
    model = train(load_config(str(ROOT / "configs" / "train.yaml"), TRAIN_SCHEMA, overrides))
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "top1": model.card["metrics"]["test"]["top1"],
        "settings": own,
        "macs": model.card["complexity"]["macs"],
        "params": model.card["complexity"]["params"],
    }


def _split_sizes(data: str) -> str:
    from collections import Counter

    files = json.loads((Path(data) / "dataset.json").read_text())["files"]
    n = Counter(f["split"] for f in files)
    return ", ".join(f"{k} {n[k]:,}" for k in ("train", "val", "test"))


def _classes(data: str) -> int:
    return len(json.loads((Path(data) / "dataset.json").read_text())["classes"])


def _cell(result) -> dict:
    """What a build (or its failure) says about one cell."""
    if not hasattr(result, "manifest"):
        return {"status": "failed", "stage": result.stage, "operator": result.operator, "reason": result.message}
    m = result.manifest
    checks = {c["check"]: c for c in m.validation["checks"]}
    compiled = m.artifact.get("compile") or {}
    drop = checks.get("accuracy_drop", {})
    applied = m.recipe.get("quantization_applied") or {}
    repair = applied.get("repair") or {}
    return {
        # the cell's status is the accuracy verdict (within the margin or not); the other budgets are listed apart
        "status": drop.get("verdict", "fail"),
        "budgets_passed": m.passed,
        "bundle": str(result.folder),
        "drop_pt": m.validation["parity"]["accuracy_drop_pt"],
        "drop_interval": drop.get("interval"),
        "drop_verdict": drop.get("verdict"),
        "agreement": m.validation["parity"]["top1_agreement"],
        "reason": "; ".join(f"{c['check']} {c['why']}" for c in m.validation["checks"] if not c["passed"]),
        "runtime_notes": "; ".join(
            x
            for x in (
                compiled.get("why_not_resizable"),
                f"delegate: {compiled['delegate']}" if str(compiled.get("delegate", "")).startswith("none") else None,
            )
            if x
        ),
        "repair": {
            "worked": repair.get("worked"),
            "chosen": repair.get("chosen"),
            "kept_float": applied.get("keep_float") or [],
            "attempts": [
                (a["fix"], a["val"]["drop_pt"], a["val"]["agreement"])
                if "val" in a
                else (a["fix"], "failed", a["error"])
                for a in repair.get("attempts", [])
            ],
        }
        if repair
        else None,
    }


def _latency(cells: dict, seconds: float) -> None:
    """fp32 and int8 of one runtime in one interleaved run (`factory bench`, in a fresh process: the sweep's
    own process has loaded many quantizers and runtimes by then): the int8/fp32 ratio of p50."""
    import subprocess

    built = {p: c for p, c in cells.items() if c.get("bundle")}
    if len(built) < 2:
        return
    cmd = [sys.executable, "-m", "factory.cli", "-q", "bench", *(c["bundle"] for c in built.values())]
    done = subprocess.run(cmd + ["--seconds", str(seconds), "--no-accuracy", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"factory bench exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    report = json.loads(done.stdout)
    by_path = {a["path"]: a["latency"]["p50_ms"] for a in report["artifacts"]}
    for c in built.values():
        c["p50_ms"] = next((v for k, v in by_path.items() if str(k).rstrip("/") == c["bundle"].rstrip("/")), None)
    if all(c.get("p50_ms") for c in built.values()):
        cells["int8-static"]["ratio_vs_fp32"] = cells["int8-static"]["p50_ms"] / cells["fp32"]["p50_ms"]


def _short(layer: str) -> str:
    """A runtime's layer name, shortened for a table: the last two parts of a module path."""
    parts = [p for p in layer.replace(";", "/").split("/") if p and not p.isdigit()]
    return "/".join(parts[-2:]) if len(parts) > 2 else layer


def _sensitive(c: dict, n: int = 2) -> list[str]:
    """The layers the repair measured as most sensitive (from the bundle's manifest), for cells that
    still miss the margin: the per-operator reason."""
    if c.get("status") in ("pass", "failed") or not c.get("bundle"):
        return []
    try:
        manifest = json.loads((Path(c["bundle"]) / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    ranking = ((manifest["recipe"].get("quantization_applied") or {}).get("repair") or {}).get("sensitivity") or []
    return [
        f"{_short(r['layers'][0])} (+{len(r['layers']) - 1})" if len(r["layers"]) > 1 else _short(r["layers"][0])
        for r in ranking[:n]
    ]


def _verdict(c: dict) -> str:
    if c["status"] == "failed":
        where = f"{c['stage']}" + (f", operator {c['operator']}" if c.get("operator") else "")
        return f"FAILED ({where}: {c['reason'][:160]})"
    iv = c.get("drop_interval")
    drop = f"{c['drop_pt']:+.2f}" + (f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "")
    # op names listed in the manifest are left out of the table
    notes = [re.sub(r" \([^()]*\.\.\.\)", "", c["runtime_notes"])] if c.get("runtime_notes") else []
    if _sensitive(c):
        notes.append("most sensitive: " + ", ".join(_sensitive(c)))
    if c.get("without_fallback"):
        notes.insert(0, f"with XNNPACK: {_verdict(c['without_fallback'])}")
    return f"{c['status']} {drop}" + (f" ({'; '.join(notes)})" if notes else "")


def _markdown(result: dict, args) -> str:
    h = result["host"]
    lines = [
        f"# Architecture sweep on {h['cpu']} ({h['cores']} cores)",
        "",
        f"Each architecture trained from scratch on the sweep's synthetic set ({SYNTH['per_class']} photos per "
        f"class at {SYNTH['size'][0]}x{SYNTH['size'][1]}: {_split_sizes(args.data)}) at "
        f"{args.size}x{args.size} for {args.epochs} epochs (configs/train.yaml otherwise; own settings: "
        + ", ".join(f"{a} {' '.join(f'{k}={v}' for k, v in o.items())}" for a, o in TRAIN_OVERRIDES.items())
        + "), then built for every runtime at fp32 and int8-static (accuracy repair on). "
        "Accuracy: drop against the canonical model on the test split with Tango's 95% interval, judged against the "
        "1.0 pt margin. Latency: p50 of the int8 bundle over the fp32 bundle of the same runtime, one interleaved "
        "run per runtime.",
        "",
        "| architecture | family | train | top-1 | runtime | fp32 | int8-static | int8 repair | int8/fp32 p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, family in ARCHITECTURES:
        r = result["architectures"].get(arch)
        if not r:
            continue
        t = r.get("train", {})
        if r.get("train_error"):
            lines.append(f"| {arch} | {family} | {t.get('seconds', 0):.0f} s | - | - | {r['train_error']} | | | |")
            continue
        for i, target in enumerate(TARGETS):
            cells = r.get("cells", {}).get(target, {})
            fp, q = cells.get("fp32"), cells.get("int8-static")
            rep = (q or {}).get("repair") or {}
            fix = rep.get("chosen") or "-"
            if rep.get("kept_float"):
                fix += f" ({len(rep['kept_float'])} kept: {', '.join(rep['kept_float'][:3])}" + (
                    "...)" if len(rep["kept_float"]) > 3 else ")"
                )
            ratio = (q or {}).get("ratio_vs_fp32")
            worth = (
                ""
                if ratio is None or not rep.get("chosen") or rep["chosen"] == "as configured" or ratio < 1
                else (" (not worth it)")
            )
            first = i == 0
            train_s = f"{t['seconds']:.0f} s" if first and t.get("seconds") is not None else ""
            top1 = f"{t['top1']:.3f}" if first and t.get("top1") is not None else ""
            lines.append(
                f"| {arch if first else ''} | {family if first else ''} | {train_s} | {top1} | {target} | "
                f"{_verdict(fp) if fp else '-'} | {_verdict(q) if q else '-'} | {fix} | "
                f"{f'{ratio:.2f}x{worth}' if ratio else '-'} |"
            )
    s = result.get("summary", {})
    lines += [
        "",
        f"Cells: {s.get('cells', 0)}; within the margin {s.get('within', 0)}; failed with a named stage "
        f"{s.get('failed', 0)}; beyond or inconclusive {s.get('beyond', 0)}. int8 cells the runtime could build: "
        f"{s.get('int8_built', 0)}, within the margin after repair {s.get('int8_within', 0)} "
        f"({s.get('int8_share', 0):.0%}; goal >= 90%). Repairs that changed the recipe: {s.get('repaired', 0)}; "
        f"of those slower than fp32 (not worth it): {s.get('not_worth_it', 0)}.",
        "",
        f"Reproduce: `python benchmarks/arch_sweep.py` (it synthesizes that set into sweep/data; "
        f"{result.get('minutes', 0):.0f} minutes here, in four runs resumed from the JSON as the code changed: "
        "the cells a later change could alter were built again with it).",
        "",
    ]
    return "\n".join(lines)


def _summary(result: dict) -> dict:
    cells = [
        (target, prec, c)
        for r in result["architectures"].values()
        for target, by_prec in r.get("cells", {}).items()
        for prec, c in by_prec.items()
    ]
    int8 = [c for _, p, c in cells if p == "int8-static" and c["status"] != "failed"]
    repaired = [c for c in int8 if (c.get("repair") or {}).get("chosen") not in (None, "as configured")]
    return {
        "cells": len(cells),
        "within": sum(c["status"] == "pass" for _, _, c in cells),
        "failed": sum(c["status"] == "failed" for _, _, c in cells),
        "beyond": sum(c["status"] in ("fail", "inconclusive") for _, _, c in cells),
        "int8_built": len(int8),
        "int8_within": sum(c["status"] == "pass" for c in int8),
        "int8_share": (sum(c["status"] == "pass" for c in int8) / len(int8)) if int8 else 0.0,
        "repaired": len(repaired),
        "not_worth_it": sum((c.get("ratio_vs_fp32") or 0) >= 1 for c in repaired),
    }


def _running(r: dict, out_json: Path, result: dict, target: str, precision: str | None, step: str) -> None:
    """Say on disk which cell is being worked on: if the process dies there, the supervisor records it."""
    r["running"] = {"target": target, "precision": precision, "step": step}
    write_json(out_json, result)


def _supervise(args) -> None:
    """Run each architecture in its own process. A runtime that crashes natively (a segfault in a delegate)
    takes only that process down: the cell it was working on is recorded as failed and the sweep goes on."""
    import subprocess

    out_json = Path(args.out + ".json")
    for arch, _ in [a for a in ARCHITECTURES if not args.arch or a[0] in args.arch]:
        crashed_latency: set[str] = set()
        for _attempt in range(12):
            cmd = [sys.executable, __file__, "--child", "--arch", arch]
            for flag in ("data", "size", "epochs", "work", "bench_seconds", "out"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            rc = subprocess.run(cmd).returncode
            result = json.loads(out_json.read_text()) if out_json.is_file() else {"architectures": {}}
            r = result["architectures"].get(arch, {})
            where = r.pop("running", None)
            if rc == 0 or where is None:
                break
            why = f"the process died (exit {rc}: a native crash in the runtime) during {where['step']}"
            cells = r.setdefault("cells", {}).setdefault(where["target"], {})
            if where["step"] == "build":
                cells[where["precision"]] = {"status": "failed", "stage": "process", "operator": None, "reason": why}
            elif where["target"] not in crashed_latency:
                # latency runs in its own `factory bench` process: a crash here is the sweep process's (native
                # objects of the builds before it), so the next process measures it again, once
                crashed_latency.add(where["target"])
                progress.info(f"== {arch}: {why}; measuring it again in a fresh process")
                write_json(out_json, result)
                continue
            else:
                r.setdefault("latency_errors", {})[where["target"]] = why
            progress.info(f"== {arch}: {why}; recorded, going on")
            write_json(out_json, result)
    result = json.loads(out_json.read_text())
    atomic_write(args.out + ".md", _markdown(result, args))
    print(_markdown(result, args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sweep/data", help="a dataset folder (synthesized when it does not exist)")
    ap.add_argument("--size", type=int, default=64, help="input height and width")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--arch", action="append", help="only these architectures (default: all)")
    ap.add_argument("--work", default="sweep", help="models, bundles and cache of the sweep")
    ap.add_argument("--bench-seconds", type=float, default=6.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "arch-sweep"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="only write the markdown again from the JSON")
    args = ap.parse_args()
    if args.report:
        result = json.loads(Path(args.out + ".json").read_text())
        result["summary"] = _summary(result)
        atomic_write(args.out + ".md", _markdown(result, args))
        print(_markdown(result, args))
        return
    if not args.child:
        if not (Path(args.data) / "dataset.json").is_file():
            from factory.data.synth import synthesize

            progress.info(f"synthesizing the sweep's dataset in {args.data}: {SYNTH}")
            synthesize(args.data, per_class=SYNTH["per_class"], size=SYNTH["size"], fractions=SYNTH["split"])
        _supervise(args)
        return
    import faulthandler

    faulthandler.enable()  # a native crash prints the Python stack it happened under (the supervisor goes on)
    from factory.bundle.signing import generate_keys
    from factory.pipeline.build import build, isolated, load_context

    def _build(model_dir: Path, target: str, precision: str, ctx, extra: tuple[str, ...] = ()):
        return build(
            model_dir,
            target,
            key_path=key,
            data=args.data,
            out_root=work / "bundles" / precision,
            overrides=(f"recipe.precision={precision}", *extra),
            cache_dir=work / "cache",
            track=False,
            context=ctx,
        )

    work = Path(args.work)
    key = work / "keys" / "signing.key"
    if not key.is_file():
        generate_keys(work / "keys" / "signing")
    out_json = Path(args.out + ".json")
    result = json.loads(out_json.read_text()) if out_json.is_file() else {}
    result |= {"host": host_info(), "settings": vars(args)}
    result.setdefault("architectures", {})
    started = time.perf_counter() - 60 * result.get("minutes", 0)
    chosen = [a for a in ARCHITECTURES if not args.arch or a[0] in args.arch]
    for arch, family in chosen:
        r = result["architectures"].setdefault(arch, {"family": family})
        model_dir = work / "models" / arch
        if "train" not in r:
            progress.info(f"== {arch}: training")
            try:
                r["train"] = _train(arch, args, model_dir)
            except Exception as exc:  # noqa: BLE001 - recorded; the sweep goes on with the next architecture
                r["train_error"] = str(exc).splitlines()[0][:300]
                continue
        if "train" in r and r["train"]["top1"] < 2.0 / r["train"].setdefault("classes", _classes(args.data)):
            # a model that learned nothing (constant output) would pass every parity check: not a result
            r["train_error"] = (
                f"did not learn in {args.epochs} epochs at this size and learning rate: test top-1 "
                f"{r['train']['top1']:.3f}, chance {1 / r['train']['classes']:.3f}; not built"
            )
            write_json(out_json, result)
            continue
        ctx = load_context(model_dir, args.data)
        for target in TARGETS:
            cells = r.setdefault("cells", {}).setdefault(target, {})
            for precision in PRECISIONS:
                if precision in cells:
                    continue
                progress.info(f"== {arch}: {target} {precision}")
                _running(r, out_json, result, target, precision, "build")
                res = isolated(target, None, lambda t=target, p=precision, m=model_dir, c=ctx: _build(m, t, p, c))
                cells[precision] = _cell(res)
                if cells[precision]["status"] == "failed" and "runtime.delegate: none" in (
                    getattr(res, "hint", None) or ""
                ):
                    # the documented fallback, chosen explicitly (as a user would in the profile), both recorded
                    progress.info(f"== {arch}: {target} {precision} again with runtime.delegate=none")
                    first = cells[precision]
                    res = isolated(
                        target,
                        None,
                        lambda t=target, p=precision, m=model_dir, c=ctx: _build(
                            m, t, p, c, ("runtime.delegate=none",)
                        ),
                    )
                    cells[precision] = _cell(res) | {"without_fallback": first}
            if "ratio_vs_fp32" not in cells.get("int8-static", {}) and target not in r.get("latency_errors", {}):
                _running(r, out_json, result, target, None, "latency")
                try:
                    _latency(cells, args.bench_seconds)
                except Exception as exc:  # noqa: BLE001 - a latency run that fails is recorded, not fatal
                    r.setdefault("latency_errors", {})[target] = str(exc).splitlines()[0][:300]
            r.pop("running", None)
            result["minutes"] = round((time.perf_counter() - started) / 60, 1)
            result["summary"] = _summary(result)
            write_json(out_json, result)  # after every runtime: the sweep resumes where it stopped
            atomic_write(args.out + ".md", _markdown(result, args))
    result["summary"] = _summary(result)
    write_json(out_json, result)
    atomic_write(args.out + ".md", _markdown(result, args))
    print(_markdown(result, args))


if __name__ == "__main__":
    main()
