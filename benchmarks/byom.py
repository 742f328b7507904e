"""Bring your own model, measured: models the factory did not train, through build, bench and pruning.

1. An ONNX classifier no torch exporter wrote (tests/foreign.py transcribes a trained tiny-cnn node by
   node with onnx.helper: opset 11, dynamic batch/H/W, BGR input with mean/std 0.5, a Softmax at the
   end), imported at a non-square 64x96, built for cpu, openvino and tflite at fp32 and int8-static
   with the default profiles' budgets (1.0 pt margin by the paired interval rule), then benchmarked
   against the source ONNX file in one interleaved run.
2. A torchvision mobilenet_v3_small trained by the factory, brought back as a user would: its
   state_dict and a ``.pt2`` program (torch.export, dynamic batch), both with ``--architecture``;
   each built for the three default profiles and with 50% structured pruning, its parity figures
   compared with the trained model's own builds (separate caches: nothing is shared).

    python benchmarks/byom.py [--work .cache/byom] [--bench-seconds 30]

Each step is the CLI a user runs (printed before it runs) and is skipped when its output exists
(delete the work folder to start over). Latency runs alone: run nothing else meanwhile.
Writes benchmarks/results/byom.{json,md}.
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

TARGETS = ("cpu", "openvino", "tflite")
PRUNE = (
    "--set",
    "recipe.pruning.method=structured",
    "--set",
    "recipe.pruning.ratio=0.5",
    "--set",
    "recipe.pruning.finetune_epochs=3",
)


def _run(*args: str, log: list, ok=(0, 1)) -> int:
    cmd = [str(ROOT / ".venv" / "bin" / "factory"), *args]
    print("$ factory " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT)
    shown = " ".join(a.replace(str(ROOT) + "/", "") for a in args)
    log.append({"command": "factory " + shown, "seconds": round(time.perf_counter() - t0, 1), "exit": done.returncode})
    if done.returncode not in ok:  # 1: a target missed a budget or failed; still reported
        raise SystemExit(f"factory {args[0]} failed with exit {done.returncode}")
    return done.returncode


def _train(work: Path, data: Path, name: str, arch: str, size: list[int], epochs: int, log: list) -> Path:
    out = work / name
    if not (out / "model_card.json").exists():
        cfg = {
            "data": {"manifest": str(data / "dataset.json")},
            "model": {"name": name, "architecture": arch, "image_size": size},
            "train": {"epochs": epochs},
            "output": {"dir": str(out)},
            "tracking": {"experiment": "byom"},
        }
        (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        _run("train", "--config", str(work / f"{name}.yaml"), log=log)
    return out


def _import(work: Path, data: Path, source: Path, name: str, extra: list[str], log: list) -> Path:
    out = work / f"imported-{name}"
    if not (out / "model_card.json").exists():
        _run("model", "import", str(source), "--data", str(data), "--out", str(out), "--name", name, *extra, log=log)
    return out


def _builds(model: Path, work: Path, label: str, extra: tuple[str, ...], log: list) -> dict:
    """Build every default target (its own cache); target -> row (figures, or the failure)."""
    reports = work / "reports" / label
    if not all((reports / f"{t}.json").exists() for t in TARGETS):
        args = [
            "build",
            "--model",
            str(model),
            "--key",
            str(work / "signing.key"),
            "--out",
            str(work / "bundles" / label),
            "--cache-dir",
            str(work / "cache" / label),
            "--report-dir",
            str(reports),
            "--no-track",
            *extra,
        ]
        for t in TARGETS:
            args += ["--target", t]
        _run(*args, log=log)
    rows = {}
    for t in TARGETS:
        r = json.loads((reports / f"{t}.json").read_text())
        if "bundle" not in r:
            rows[t] = {
                "failed": f"{r['stage']}" + (f" (operator {r['operator']})" if r.get("operator") else ""),
                "message": r["message"],
            }
            continue
        m = json.loads((Path(r["bundle"]) / "manifest.json").read_text())
        check = next(c for c in m["validation"]["checks"] if c["check"] == "accuracy_drop")
        p = m["validation"]["parity"]
        rows[t] = {
            "precision": r["precision"],
            "pruning": r["pruning"],
            "top1": p["top1"],
            "drop_pt": p["accuracy_drop_pt"],
            "interval": check.get("interval"),
            "verdict": check["verdict"],
            "agreement": p["top1_agreement"],
            "max_abs_diff": p.get("max_abs_diff"),
            "passed": r["passed"],
            "bundle": r["bundle"],
            "n": p["n"],
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "byom"))
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--bench-seconds", type=float, default=30.0)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data, log = work / "data", []
    if not (data / "dataset.json").exists():
        _run(
            "data",
            "synth",
            "--out",
            str(data),
            "--per-class",
            str(a.per_class),
            "--size",
            "192x128",
            "--split",
            "0.4,0.1,0.5",
            log=log,
        )
    _run("keys", "generate", "--out", str(work / "signing"), "--if-missing", log=log)
    result: dict = {"host": host_info(), "commands": log, "settings": vars(a)}

    # 1. the hand-built ONNX graph
    from tests.foreign import hand_built_onnx

    tiny = _train(work, data, "tiny", "tiny-cnn", [64, 96], 20, log)
    source = work / "hand-built.onnx"
    if not source.exists():
        hand_built_onnx(tiny / "weights.pt", source)
    onnx_model = _import(
        work,
        data,
        source,
        "hand-built",
        ["--size", "64x96", "--color-order", "BGR", "--mean", "0.5", "--std", "0.5"],
        log,
    )
    card = json.loads((onnx_model / "model_card.json").read_text())
    result["onnx"] = {
        "source": {k: card["source"][k] for k in ("kind", "source_opset", "source_input", "outputs_are", "removed")},
        "test": {k: card["metrics"]["test"][k] for k in ("top1", "n")},
        "source_max_abs_diff": card["onnx_parity"]["max_abs_diff"],
        "builds": {p: _builds(onnx_model, work, f"onnx-{p}", ("--precision", p), log) for p in ("fp32", "int8-static")},
    }
    folders = [r["bundle"] for p in result["onnx"]["builds"].values() for r in p.values() if "bundle" in r]
    bench = work / "bench"
    _run(
        "bench",
        str(onnx_model),
        str(source),
        *folders,
        "--input-shape",
        "1,3,64,96",
        "--seconds",
        str(a.bench_seconds),
        "--out",
        str(bench),
        log=log,
    )
    report = json.loads((bench / "report.json").read_text())
    result["bench"] = {
        "rows": [
            {
                "artifact": r["id"],
                "backend": r["runtime"]["backend"],
                "precision": r["runtime"]["precision"],
                "p50_ms": r["latency"]["p50_ms"],
                "p50_interval": r["latency"].get("median_ci"),
                "n": r["latency"]["n"],
            }
            for r in report["artifacts"]
        ]
    }

    # 2. a torchvision architecture, as a state_dict and as a .pt2 program
    trained = _train(work, data, "mnv3", "mobilenet_v3_small", [96, 96], 10, log)
    program = work / "mnv3.pt2"
    if not program.exists():
        import torch

        from factory.train.canonical import load_canonical

        module = load_canonical(trained).build_module()
        batch = torch.export.Dim("batch", min=1, max=1024)
        ep = torch.export.export(module, (torch.zeros(2, 3, 96, 96),), dynamic_shapes=({0: batch},))
        torch.export.save(ep, program)
    arch = ["--size", "96x96", "--architecture", "mobilenet_v3_small"]
    models = {
        "trained": trained,
        "state-dict": _import(work, data, trained / "weights.pt", "mnv3-sd", arch, log),
        "pt2": _import(work, data, program, "mnv3-pt2", arch, log),
    }
    torch_rows = {}
    for label, model in models.items():
        torch_rows[label] = {
            "default": _builds(model, work, f"{label}-default", (), log),
            "pruned": _builds(model, work, f"{label}-pruned", PRUNE, log),
        }
    keys = ("precision", "pruning", "top1", "drop_pt", "interval", "verdict", "agreement")

    def figures(label):
        return {k: {t: {f: r.get(f) for f in keys} for t, r in v.items()} for k, v in torch_rows[label].items()}

    result["torch"] = {
        "rows": torch_rows,
        "equal_to_trained": {k: figures(k) == figures("trained") for k in ("state-dict", "pt2")},
    }
    out = ROOT / "benchmarks" / "results" / "byom"
    write_json(out.with_suffix(".json"), result)
    atomic_write(out.with_suffix(".md"), _markdown(result).encode())
    print(_markdown(result))


def _row(target: str, r: dict) -> str:
    if "failed" in r:
        return f"| {target} | - | - | - | - | - | FAILED at {r['failed']}: {r['message'][:120]} |"
    iv, pr = r["interval"], r["pruning"]
    pruning = "none" if pr["method"] == "none" else f"{pr['method']} {pr['ratio']:g} ({pr['finetune_epochs']} epochs)"
    interval = f"[{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "-"
    return (
        f"| {target} | {r['precision']} | {pruning} | {r['top1']:.4f} | {r['drop_pt']:+.2f} {interval} | "
        f"{r['agreement']:.4f} | {r['verdict']} |"
    )


def _markdown(r: dict) -> str:
    o = r["onnx"]
    head = "| target | precision | pruning | top-1 | drop pt [95% interval] | agreement | verdict |\n" + "|---" * 7
    head += "|"
    lines = [
        "# Bring your own model: imports through every stage",
        "",
        f"Host: {r['host']['cpu']} ({r['host']['cores']} cores). `python benchmarks/byom.py`.",
        "",
        "## 1. An ONNX graph no torch exporter wrote",
        "",
        f"Source: opset {o['source']['source_opset']}, input {o['source']['source_input']['shape']} (BGR, mean/std "
        f"0.5), outputs {o['source']['outputs_are']} ({o['source']['removed']}). Imported at 64x96: test top-1 "
        f"{o['test']['top1']:.4f} on {o['test']['n']} images; canonical graph vs the source file: max abs diff "
        f"{o['source_max_abs_diff']:.1e}. Builds with the default profiles' budgets (1.0 pt margin):",
        "",
        head,
    ]
    for rows in o["builds"].values():
        lines += [_row(t, row) for t, row in rows.items()]
    lines += [
        "",
        "One interleaved `factory bench` run (batch 1), the source ONNX file beside the bundles:",
        "",
        "| artifact | backend | precision | p50 ms |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {b['artifact']} | {b['backend']} | {b['precision']} | {b['p50_ms']:.3f} |" for b in r["bench"]["rows"]
    ]
    lines += ["", "## 2. mobilenet_v3_small: trained, and brought back as a state_dict and as a .pt2 program", ""]
    for label, rows in r["torch"]["rows"].items():
        lines += [f"**{label}**", "", head]
        for kind in ("default", "pruned"):
            lines += [_row(t, row) for t, row in rows[kind].items()]
        lines.append("")
    eq = r["torch"]["equal_to_trained"]
    lines += [
        f"Parity figures (top-1, drop, interval, verdict, agreement per target, pruned included) equal to the "
        f"trained model's: state-dict {eq['state-dict']}, pt2 {eq['pt2']}.",
        "",
        "Commands of this run (a step whose output existed was skipped):",
        "",
    ]
    lines += [f"- `{c['command']}` ({c['seconds']} s, exit {c['exit']})" for c in r["commands"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
