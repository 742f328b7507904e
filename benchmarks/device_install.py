"""What a device install costs: one fresh venv per device extra, from the factory's wheel, as the README's
board section installs it; its size on disk, the time it took, its largest packages, and a check that it
holds no torch (nor any other part of the build side).

    python benchmarks/device_install.py [--extra device-litert ...] [--arm64-root ROOT]

Each install runs with pip's cache off (a board starts with none) against this machine's package
mirror. With ``--arm64-root`` (made by scripts/arm64-root.sh), the litert install inside the emulated arm64
root is measured too (its size; its time is the emulator's). Writes benchmarks/results/device-install.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory._io import atomic_write, write_json  # noqa: E402
from factory.lineage import host_info  # noqa: E402

EXTRAS = ("device-litert", "device-onnxruntime", "device-openvino")
BUILD_SIDE = ("torch", "torchvision", "jax", "transformers", "litert_torch", "nncf", "onnx", "mlflow", "matplotlib")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _site(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


def _largest(site: Path, n: int = 6) -> list[tuple[str, int]]:
    sizes = [
        (p.name, _size(p)) for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))
    ]
    return sorted(sizes, key=lambda s: -s[1])[:n]


def _present(site: Path) -> list[str]:
    return sorted(name for name in BUILD_SIDE if (site / name).exists())


def measure(extra: str, wheel: Path, work: Path) -> dict:
    venv = work / extra
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", "--disable-pip-version-check"]
        + ["--constraint", str(ROOT / "requirements" / "constraints.txt"), f"{wheel}[{extra}]"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"extra": extra, "error": done.stderr.strip()[-600:]}
    site = _site(venv)
    check = subprocess.run(
        [str(venv / "bin" / "factory"), "--version"], capture_output=True, text=True
    )  # the command line starts without the build side
    return {
        "extra": extra,
        "platform": "linux/x86_64",
        "seconds": round(seconds, 1),
        "venv_mb": round(_size(venv) / 1e6, 1),
        "largest_mb": [(name, round(b / 1e6, 1)) for name, b in _largest(site)],
        "build_side_present": _present(site),
        "factory_starts": check.returncode == 0,
    }


def measure_arm64(root: Path) -> dict | None:
    venv = root / "opt" / "factory-agent"
    if not venv.is_dir():
        return None
    site = _site(venv)
    timed = venv / ".install-seconds"  # written by scripts/arm64-root.sh: the README's board section, emulated
    return {
        "extra": "device-litert",
        "platform": "linux/arm64 (emulated root)",
        "seconds": float(timed.read_text()) if timed.is_file() else None,
        "emulated": True,
        "venv_mb": round(_size(venv) / 1e6, 1),
        "largest_mb": [(name, round(b / 1e6, 1)) for name, b in _largest(site)],
        "build_side_present": _present(site),
        "factory_starts": (venv / "bin" / "factory").exists(),
    }


def markdown(result: dict) -> str:
    h = result["host"]
    lines = [
        f"# Device installs on {h['cpu']} ({h['cores']} cores)",
        "",
        "One fresh venv per device extra, `pip install --no-cache-dir --constraint requirements/constraints.txt "
        "'edge_model_factory-*.whl[EXTRA]'` (what the README's board section runs), from this machine's package "
        "mirror. Size is everything in the venv (pip and the interpreter's links included).",
        "",
        "| extra | platform | install time | venv size | largest packages (MB) | build side present |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["installs"]:
        if r.get("error"):
            lines.append(f"| {r['extra']} | - | failed | - | {r['error'][:200]} | - |")
            continue
        t = "-" if r.get("seconds") is None else f"{r['seconds']:.0f} s" + (" (emulated)" if r.get("emulated") else "")
        big = ", ".join(f"{n} {mb:.0f}" for n, mb in r["largest_mb"][:5])
        lines.append(
            f"| `{r['extra']}` | {r['platform']} | {t} | {r['venv_mb']:.0f} MB | {big} | "
            f"{', '.join(r['build_side_present']) or 'none'} |"
        )
    lines += ["", "Reproduce: `python benchmarks/device_install.py --arm64-root .cache/arm64-root`.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", action="append", choices=EXTRAS, help="only these extras (default: all)")
    ap.add_argument("--arm64-root", default=None, help="an emulated arm64 root with the board install")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "device-install"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="device-install-"))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(ROOT)],
            check=True,
            capture_output=True,
        )
        wheel = next(work.glob("edge_model_factory-*.whl"))
        installs = []
        for extra in args.extra or EXTRAS:
            print(f"installing {extra} ...", flush=True)
            installs.append(measure(extra, wheel, work))
            print(json.dumps(installs[-1]), flush=True)
        if args.arm64_root:
            arm = measure_arm64(Path(args.arm64_root))
            if arm:
                installs.append(arm)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"host": host_info(), "installs": installs}
    write_json(args.out + ".json", result)
    atomic_write(args.out + ".md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
