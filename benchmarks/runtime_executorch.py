"""ExecuTorch beside LiteRT and ONNX Runtime: the main job's model and two sweep architectures, fp32 and
int8-static, each model's six bundles and PyTorch eager in one interleaved `factory bench` run.

    python benchmarks/runtime_executorch.py [--work .cache/executorch-bench] [--bench-seconds 30] [--model NAME ...]

The data is the main job's (params.yaml: 400 photos per class at 256x192, 1,280 test images, which resolve
the 1.0 pt margin); the main job's model is configs/train.yaml (mobilenet_v3_small at 128x128, 12 epochs);
the sweep architectures (resnet18, shufflenet_v2_x0_5) are trained at 64x64 for 8 epochs as in
benchmarks/arch_sweep.py. Each model is built with `factory build` for cpu, tflite and executorch at fp32
and at int8-static (accuracy repair on, the default budgets), then benchmarked. Resumable: trained models,
builds and bench reports are kept in --work and skipped on a re-run. `--model` re-runs only the models
named and keeps the others' rows from the results file (each model's comparison is its own interleaved
run; the table says on which host and day each was measured).
Writes benchmarks/results/executorch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

TARGETS = ("cpu", "tflite", "executorch")
PRECISIONS = ("fp32", "int8-static")
MODELS = {  # name: (architecture, image size, epochs)
    "id-docs": ("mobilenet_v3_small", [128, 128], 12),  # configs/train.yaml: the main job's model
    "resnet18": ("resnet18", [64, 64], 8),
    "shufflenet": ("shufflenet_v2_x0_5", [64, 64], 8),
}


def _run(*args: str, log: list, ok=(0, 1), capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [str(ROOT / ".venv" / "bin" / "factory"), *args]
    print("$ factory " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=capture, text=True)
    shown = " ".join(a.replace(str(ROOT) + "/", "") for a in args)
    log.append({"command": "factory " + shown, "seconds": round(time.perf_counter() - t0, 1), "exit": done.returncode})
    if done.returncode not in ok:  # 1: a target missed a budget; still reported
        raise SystemExit(f"factory {args[0]} failed with exit {done.returncode}: {(done.stderr or '')[-500:]}")
    return done


def _train(work: Path, data: Path, name: str, log: list) -> Path:
    arch, size, epochs = MODELS[name]
    out = work / "models" / name
    if not (out / "model_card.json").exists():
        cfg = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
        cfg["data"]["manifest"] = str(data / "dataset.json")
        cfg["model"].update(name=name, architecture=arch, image_size=size)
        cfg["train"]["epochs"] = epochs
        cfg["output"] = {**cfg.get("output", {}), "dir": str(out)}
        cfg["tracking"] = {**cfg.get("tracking", {}), "experiment": "executorch-bench", "log_model": False}
        (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        _run("train", "--config", str(work / f"{name}.yaml"), log=log)
    return out


def _build(model: Path, work: Path, name: str, precision: str, log: list) -> dict:
    reports = work / "reports" / name / precision
    if not all((reports / f"{t}.json").exists() for t in TARGETS):
        args = ["build", "--model", str(model), "--key", str(work / "signing.key"), "--precision", precision]
        args += ["--out", str(work / "bundles" / name / precision), "--cache-dir", str(work / "cache" / name)]
        args += ["--report-dir", str(reports), "--no-track"]
        for t in TARGETS:
            args += ["--target", t]
        _run(*args, log=log)
    rows = {}
    for t in TARGETS:
        r = json.loads((reports / f"{t}.json").read_text())
        if "bundle" not in r:
            rows[t] = {"failed": r.get("stage"), "message": r.get("message")}
            continue
        m = json.loads((Path(r["bundle"]) / "manifest.json").read_text())
        check = next(c for c in m["validation"]["checks"] if c["check"] == "accuracy_drop")
        p = m["validation"]["parity"]
        repair = (m["recipe"].get("quantization_applied") or {}).get("repair") or {}
        rows[t] = {
            "bundle": r["bundle"],
            "passed": r["passed"],
            "top1": p["top1"],
            "drop_pt": p["accuracy_drop_pt"],
            "interval": check.get("interval"),
            "verdict": check["verdict"],
            "failed_checks": [c["check"] for c in m["validation"]["checks"] if c["verdict"] != "pass"],
            "agreement": p["top1_agreement"],
            "n": p["n"],
            "repair": repair.get("worked"),
            "kept_float": len(m["recipe"].get("quantization_applied", {}).get("keep_float") or []),
            "dynamic_batch": m["runtime"]["dynamic_batch"],
            "size_mb": m["artifact"]["size_bytes"] / 1e6,
        }
    return rows


def _bench(work: Path, model: Path, name: str, built: dict, seconds: float, log: list) -> dict:
    out = work / "bench" / f"{name}.json"
    if not out.exists():
        bundles = [row["bundle"] for p in PRECISIONS for row in built[p].values() if row.get("bundle")]
        done = _run("-q", "bench", str(model), *bundles, "--seconds", str(seconds), "--json", log=log, capture=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(done.stdout)
    report = json.loads(out.read_text())
    return {
        str(a["path"]).rstrip("/"): {
            "p50_ms": a["latency"]["p50_ms"],
            "p95_ms": a["latency"]["p95_ms"],
            "median_ci": a["latency"].get("median_ci"),
            "speedup": a.get("speedup_vs_pytorch_eager"),
            "kind": a["kind"],
        }
        for a in report["artifacts"]
    }


def _failed(row: dict) -> str:
    """The bundle's other failed budgets (the verdict column is the accuracy check's)."""
    other = [c for c in row.get("failed_checks", []) if c != "accuracy_drop"]
    return f" (bundle fails {', '.join(other)})" if other else ""


def _markdown(result: dict) -> str:
    h = result["host"]
    lines = [
        f"# ExecuTorch beside LiteRT and ONNX Runtime on {h.get('cpu', '?')} ({h.get('cores', '?')} cores)",
        "",
        "Measured: " + "; ".join(f"{n} on {m.get('measured', '?')}" for n, m in result["models"].items()) + ".",
        "",
        "`python benchmarks/runtime_executorch.py`. Data: the main job's synthetic set (params.yaml), "
        f"{result['test_images']} test images. Each model's six bundles and PyTorch eager in one interleaved "
        f"`factory bench` run ({result['settings']['bench_seconds']:.0f} s, batch 1, each artifact in its own "
        "worker process). Accuracy: the build's verdict on the test split (drop against the canonical model, "
        "Tango 95% interval, 1.0 pt margin). ExecuTorch 1.5.1 (XNNPACK delegate), LiteRT (ai-edge-litert), "
        "ONNX Runtime; 2 threads each.",
        "",
        "| model | runtime | precision | top-1 | drop pt [95% interval] | verdict | int8 repair | p50 ms [95% CI] "
        "| p95 ms | vs eager | size MB | dynamic batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        eager = next((v for v in m["bench"].values() if v["kind"] == "canonical"), None)
        if eager:
            arch, (hh, ww), _ = MODELS[name]
            lines.append(
                f"| {name} ({arch} {hh}x{ww}) | PyTorch eager | fp32 | {m['canonical_top1']:.4f} | - | - | - | "
                f"{eager['p50_ms']:.3f} | {eager['p95_ms']:.3f} | 1.00x | - | - |"
            )
        for p in PRECISIONS:
            for t in TARGETS:
                row = m["builds"][p][t]
                if "bundle" not in row:
                    lines.append(f"| {name} | {t} | {p} | failed at {row['failed']}: {row['message'][:120]} |")
                    continue
                b = m["bench"].get(row["bundle"].rstrip("/"), {})
                lo, hi = row["interval"] or (float("nan"), float("nan"))
                ci = b.get("median_ci") or [float("nan"), float("nan")]
                lines.append(
                    f"| {name} | {t} | {p} | {row['top1']:.4f} | {row['drop_pt']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                    f"{row['verdict']}{_failed(row)} | {row['repair'] or '-'} | {b.get('p50_ms', float('nan')):.3f} "
                    f"[{ci[0]:.3f}, {ci[1]:.3f}] | {b.get('p95_ms', float('nan')):.3f} | "
                    f"{(b.get('speedup') or float('nan')):.2f}x | {row['size_mb']:.2f} | {row['dynamic_batch']} |"
                )
    lines += ["", "Commands and their times:", ""]
    commands = result["commands"] + [c for m in result["models"].values() for c in m.get("commands", [])]
    lines += [f"- `{c['command']}`: {c['seconds']} s (exit {c['exit']})" for c in commands]
    return "\n".join(lines) + "\n"


def _kept(rerun: list[str] | None) -> dict:
    """The results file's rows of the models not re-run (with the commands that made them)."""
    path = ROOT / "benchmarks" / "results" / "executorch.json"
    if not rerun or not path.exists():
        return {}
    old = json.loads(path.read_text())
    kept = {n: m for n, m in old["models"].items() if n not in rerun}
    for name, m in kept.items():  # a file written before commands were kept per model
        m.setdefault("measured", f"{old.get('date', 'an earlier run')}, {old['host'].get('cpu', '?')}")
        m.setdefault(
            "commands", [c for c in old["commands"] if f"/{name}" in c["command"] or f"{name}.yaml" in c["command"]]
        )
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "executorch-bench"))
    ap.add_argument("--bench-seconds", type=float, default=30.0)
    ap.add_argument("--model", action="append", choices=sorted(MODELS), help="re-run only these (repeatable)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data, log = work / "data", []
    synth = yaml.safe_load((ROOT / "params.yaml").read_text())["synth"]
    if not (data / "dataset.json").exists():
        _run("data", "synth", "--out", str(data), "--per-class", str(synth["per_class"]), "--size", synth["size"],
             "--split", synth["split"], "--seed", str(synth["seed"]), log=log)  # fmt: skip
    _run("keys", "generate", "--out", str(work / "signing"), "--if-missing", log=log)
    result: dict = {
        "host": host_info(),
        "date": time.strftime("%Y-%m-%d"),
        "commands": log,
        "settings": vars(a),
        "models": _kept(a.model),
    }
    for name in a.model or MODELS:
        model_log: list = []
        model = _train(work, data, name, model_log)
        card = json.loads((model / "model_card.json").read_text())
        built = {p: _build(model, work, name, p, model_log) for p in PRECISIONS}
        result["models"][name] = {
            "canonical_top1": card["metrics"]["test"]["top1"],
            "builds": built,
            "bench": _bench(work, model, name, built, a.bench_seconds, model_log),
            "measured": f"{result['date']}, {result['host'].get('cpu', '?')}",
            "commands": model_log,
        }
        result["models"] = {n: result["models"][n] for n in MODELS if n in result["models"]}
        result["test_images"] = card["metrics"]["test"]["n"]
        results = ROOT / "benchmarks" / "results"
        write_json(results / "executorch.json", result)
        atomic_write(results / "executorch.md", _markdown(result))
    print((ROOT / "benchmarks" / "results" / "executorch.md").read_text())


if __name__ == "__main__":
    main()
