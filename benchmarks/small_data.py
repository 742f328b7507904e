"""A small real dataset through the factory: scikit-learn's bundled digits (1,797 8x8 scans of handwritten
digits, 10 classes; shipped inside the scikit-learn wheel, nothing downloaded), written as an ImageFolder
tree at 32x32, imported with a test split of about 330 images (the size the issue reported), a tiny-cnn
trained, then every default target built. The test split cannot resolve the default 1.0 pt margin; the
bundles are built and signed anyway and ``budgets.on_inconclusive`` decides (default: exact fp32 passes,
int8 fails; ``warn`` accepts int8).

    python benchmarks/small_data.py [--work .cache/small-data]

Writes benchmarks/results/small-data.{json,md}.
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


def _run(*args: str, log: list) -> int:
    print("$ factory " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "factory"), *args], cwd=ROOT)
    shown = " ".join(a.replace(str(ROOT) + "/", "") for a in args)
    log.append({"command": "factory " + shown, "seconds": round(time.perf_counter() - t0, 1), "exit": done.returncode})
    if done.returncode not in (0, 1):
        raise SystemExit(f"factory {args[0]} failed with exit {done.returncode}")
    return done.returncode


def _digits_tree(folder: Path) -> int:
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = folder / f"digit-{label}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = (255 - img * (255 / 16)).astype(np.uint8)  # dark ink on white, as scanned
        cv2.imwrite(str(d / f"{i:04d}.png"), cv2.resize(pixels, (32, 32), interpolation=cv2.INTER_NEAREST))
    return len(digits.images)


def _rows(reports: Path, exit_code: int, label: str) -> list[dict]:
    rows = []
    for t in TARGETS:
        r = json.loads((reports / f"{t}.json").read_text())
        if "bundle" not in r:
            rows.append({"build": label, "target": t, "failed": r["stage"], "message": r["message"]})
            continue
        m = json.loads((Path(r["bundle"]) / "manifest.json").read_text())
        v = m["validation"]
        drop = next(c for c in v["checks"] if c["check"] == "accuracy_drop")
        rows.append(
            {
                "build": label,
                "target": t,
                "precision": r["precision"],
                "n": v["parity"]["n"],
                "top1": v["parity"]["top1"],
                "agreement": v["parity"]["top1_agreement"],
                "max_abs_diff": v["parity"]["max_abs_diff"],
                "drop_pt": drop["value"],
                "interval": drop["interval"],
                "accuracy_verdict": drop["verdict"],
                "passed": v["passed"],
                "rule": (v.get("inconclusive") or {}).get("rule"),
                "why": (v.get("inconclusive") or {}).get("why"),
                "signed": (Path(r["bundle"]) / "manifest.sig").is_file(),
                "exit": exit_code,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "small-data"))
    ap.add_argument(
        "--split",
        default="0.6,0.22,0.18",
        help="train,val,test; the default 0.6,0.2,0.2 gives this copy 383 test images, just above the 381 "
        "a perfect candidate needs at 1.0 pt, so the benchmark takes a little less (the issue's 364)",
    )
    a = ap.parse_args()
    work, log = Path(a.work), []
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tree").exists():
        _digits_tree(work / "tree")
    data = work / "data"
    if not (data / "dataset.json").exists():
        _run("data", "import", "imagefolder", str(work / "tree"), "--out", str(data), "--split", a.split, log=log)
    model = work / "model"
    if not (model / "model_card.json").exists():
        cfg = {
            "data": {"manifest": str(data / "dataset.json")},
            "model": {"name": "digits", "architecture": "tiny-cnn", "image_size": [32, 32]},
            "train": {"epochs": 30},
            "augment": {"perspective": 0.0, "rotate_deg": 5.0},
            "output": {"dir": str(model)},
            "tracking": {"experiment": "small-data"},
        }
        (work / "train.yaml").write_text(yaml.safe_dump(cfg))
        _run("train", "--config", str(work / "train.yaml"), log=log)
    _run("keys", "generate", "--out", str(work / "signing"), "--if-missing", log=log)
    rows = []
    for label, extra in (
        ("every target fp32", ("--precision", "fp32")),
        ("every target int8-static", ("--precision", "int8-static")),
        ("int8-static, on_inconclusive=warn", ("--precision", "int8-static", "--set", "budgets.on_inconclusive=warn")),
    ):
        slug = label.split(",")[0].replace(" ", "-") + ("-warn" if "warn" in label else "")
        args = [
            "build",
            "--model",
            str(model),
            "--key",
            str(work / "signing.key"),
            "--out",
            str(work / "bundles" / slug),
            "--cache-dir",
            str(work / "cache"),
            "--report-dir",
            str(work / "reports" / slug),
            "--no-track",
            *extra,
        ]
        for t in TARGETS:
            args += ["--target", t]
        code = _run(*args, log=log)
        rows += _rows(work / "reports" / slug, code, label)
    card = json.loads((model / "model_card.json").read_text())
    manifest = json.loads((data / "dataset.json").read_text())
    splits = {s: sum(1 for f in manifest["files"] if f["split"] == s) for s in ("train", "val", "test")}
    result = {
        "host": host_info(),
        "images": len(manifest["files"]),
        "splits": splits,
        "canonical_test_top1": card["metrics"]["test"]["top1"],
        "rows": rows,
        "commands": log,
    }
    out = ROOT / "benchmarks" / "results" / "small-data"
    write_json(out.with_suffix(".json"), result)
    atomic_write(out.with_suffix(".md"), _markdown(result).encode())
    print(_markdown(result))


def _markdown(r: dict) -> str:
    lines = [
        "# A small real dataset: bundles with an honest verdict",
        "",
        f"Host: {r['host']['cpu']} ({r['host']['cores']} cores). `python benchmarks/small_data.py`.",
        "",
        f"scikit-learn digits: {r['images']:,} images, splits {r['splits']}; canonical tiny-cnn test top-1 "
        f"{r['canonical_test_top1']:.4f}. Default budgets: 1.0 pt margin.",
        "",
        "| build | target | precision | top-1 | drop pt [95% interval] | accuracy verdict | agreement | max abs diff "
        "| rule | bundle passes | signed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        if "failed" in x:
            lines.append(f"| {x['build']} | {x['target']} | FAILED at {x['failed']}: {x['message'][:100]} |")
            continue
        iv = x["interval"]
        lines.append(
            f"| {x['build']} | {x['target']} | {x['precision']} | {x['top1']:.4f} | {x['drop_pt']:+.2f} "
            f"[{iv[0]:+.2f}, {iv[1]:+.2f}] | {x['accuracy_verdict']} | {x['agreement']:.4f} | "
            f"{x['max_abs_diff']:.1e} | {x['rule'] or '-'} | {x['passed']} | {x['signed']} |"
        )
    lines += ["", "Commands of this run (a step whose output existed was skipped):", ""]
    lines += [f"- `{c['command']}` ({c['seconds']} s, exit {c['exit']})" for c in r["commands"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
