"""Draw the documentation site's pictures with the factory itself, on a tiny model (a few minutes on 2 cores).

    python scripts/docs_pictures.py          # writes docs/img/*.png (committed; `make docs` does not redraw them)

latency.png and accuracy_vs_latency.png come from `factory bench`, pareto.png from `factory build --search`,
status.png is the registry's status page in headless Chromium after a simulated fleet took a release
through a staged rollout. The figures in them are this tiny model's on this host: they show what the
pictures look like, not how fast a real model is (the guide's tables say that).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
IMG = ROOT / "docs" / "img"
FACTORY = str(ROOT / ".venv" / "bin" / "factory")


def _factory(*args: str) -> None:
    print("$ factory " + " ".join(args), flush=True)
    subprocess.run([FACTORY, "-q", *args], check=True, cwd=ROOT)


def _status_page(tmp: Path, bundle: Path, pub: Path, data: Path) -> None:
    from registry_server import start_registry

    from factory.bundle.manifest import Manifest
    from factory.device.client import RegistryClient
    from factory.device.simulate import Fleet, Knobs, load_images

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: status.png not redrawn")
        return
    m = Manifest.read(bundle)
    tele = {"window_seconds": 2, "evaluate_seconds": 0.0}
    srv, _settings, _engine, admin, _ = start_registry(tmp / "registry", pub, tele)
    try:
        client = RegistryClient(srv.url, admin)
        client.publish(bundle)
        client.create_rollout(
            {
                "name": f"{m.name}-{m.version}",
                "release": {"name": m.name, "version": m.version},
                "stages": [{"percent": 20, "min_devices_reporting": 3}, {"percent": 100}],
                "health": {"min_inferences": 40, "max_psi": 50.0, "max_js": 1.0},
            }  # fmt: skip
        )
        fleet = Fleet(client, model=m.name, devices=40, targets=[m.target], knobs=Knobs(latency_model_ms=0.5),
                      images=load_images(str(data)), cache=tmp / "devices", window_seconds=2)  # fmt: skip
        fleet.simulate(4, inferences=30)
        url = f"{srv.url}/status#token={admin}"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=5000",
                 f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,900"]  # fmt: skip
        subprocess.run([chromium, *flags, f"--screenshot={IMG / 'status.png'}", url], capture_output=True, timeout=120)
    finally:
        srv.stop()


def main() -> None:
    from factory.bundle.signing import generate_keys
    from tests.conftest import write_train_config

    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        _factory("data", "synth", "--out", str(tmp / "data"), "--per-class", "40", "--size", "96x72")
        cfg = write_train_config(tmp / "train.yaml", tmp / "data" / "dataset.json", tmp / "model",
                                 train__epochs=4, tracking__log_model=False)  # fmt: skip
        _factory("train", "--config", str(cfg))
        key, pub = generate_keys(tmp / "keys" / "signing")
        targets = tmp / "targets"
        targets.mkdir()
        for src in (ROOT / "targets").glob("*.yaml"):
            profile = yaml.safe_load(src.read_text())
            profile["budgets"] = {"max_accuracy_drop_pt": 100.0, "min_top1_agreement": 0.0}
            (targets / src.name).write_text(yaml.safe_dump(profile))
        common = ["--model", str(tmp / "model"), "--key", str(key), "--targets-dir", str(targets), "--no-track",
                  "--cache-dir", str(tmp / "cache")]  # fmt: skip
        _factory("build", "--target", "cpu", "--target", "openvino", "--target", "tflite", "--out",
                 str(tmp / "bundles"), *common)  # fmt: skip
        _factory("bench", str(tmp / "model"), str(next((tmp / "bundles").glob("*/*"))), "--seconds", "3",
                 "--out", str(tmp / "bench"))  # fmt: skip
        for name in ("latency.png", "accuracy_vs_latency.png"):
            shutil.copy(tmp / "bench" / name, IMG / name)
        quick = tmp / "search.yaml"
        quick.write_text(yaml.safe_dump({"objective": "p50_latency", "space": {
            "recipe.precision": ["fp32", "int8-static"], "runtime.threads": [1, 2]}, "bench_seconds": 4}))  # fmt: skip
        _factory("build", "--target", "cpu", "--search", "--search-config", str(quick), "--out",
                 str(tmp / "searched"), "--search-dir", str(tmp / "search"), *common)  # fmt: skip
        shutil.copy(next((tmp / "search").rglob("pareto.png")), IMG / "pareto.png")
        _status_page(tmp, next((tmp / "bundles").glob("*/*/cpu")), pub, tmp / "data")
    for p in sorted(IMG.glob("*.png")):
        print(p.relative_to(ROOT), p.stat().st_size)


if __name__ == "__main__":
    main()
