"""The project's own wiring: the README commands, CI, the Dockerfile, the DVC pipeline, params."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factory.config import load_config
from factory.pipeline import PIPELINE_SCHEMA
from tests.conftest import ROOT, invoke


def test_only_the_executor_imports_ray():
    """Ray is an optional extra: the core, the device side and everything else never import it."""
    importers = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "factory").rglob("*.py")
        if re.search(r"^(import ray\b|from ray\b)", p.read_text(), re.M)  # at module level: imported with factory
    )
    assert importers == [], importers  # the executor imports it inside its functions only
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "factory").rglob("*.py") if "import ray" in p.read_text())
    assert users == ["factory/pipeline/executor.py"], users


def test_no_benchmark_script_shadows_an_installed_module():
    """A script's folder on sys.path (``python benchmarks/x.py`` puts it first) is inherited by every process it
    spawns: a script named like a package (``executorch.py``) made the bench workers import the script instead."""
    from importlib.machinery import PathFinder

    # searched on the path without benchmarks/ itself, and not in sys.modules: a test that imported a script
    # from there (test_altstack imports altstack_repro) must not make that script look like an installed module
    here = (ROOT / "benchmarks").resolve()
    path = [p for p in sys.path if Path(p or ".").resolve() != here]
    scripts = (ROOT / "benchmarks").glob("*.py")
    clashes = [
        p.name for p in scripts if p.stem in sys.builtin_module_names or PathFinder.find_spec(p.stem, path) is not None
    ]
    assert not clashes, f"benchmarks/ scripts named like importable modules: {clashes}"


def test_an_installed_package_that_fails_to_import_says_why_not_that_it_is_missing():
    from factory._deps import require
    from factory.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match="installed but fails to import: No module named 'yaml.nothing'"):
        require("yaml.nothing", "pyyaml", "core", "the test")
    with pytest.raises(MissingDependencyError, match="which is not installed"):
        require("surely_not_a_module_zz", "zz", "core", "the test")


def test_readme_starts_with_the_two_commands():
    lines = [x for x in (ROOT / "README.md").read_text().splitlines() if x.strip()]
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block[0].startswith("make run") and block[1].startswith("make test")


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "pytest" in makefile.split("\ntest:")[1].split("\n\n")[0]


def test_dockerfile_lints_clean_and_installs_like_the_readme():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    docker = (ROOT / "Dockerfile").read_text()
    assert "./scripts/install.sh" in docker
    assert "./scripts/install.sh" in (ROOT / "Makefile").read_text()
    for src in [line.split()[1] for line in docker.splitlines() if line.startswith("COPY")]:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_params_yaml_is_valid_and_dvc_stages_read_their_sections():
    params = load_config(ROOT / "params.yaml", PIPELINE_SCHEMA)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = dvc["stages"]
    assert list(stages)[:3] == ["data", "profile", "train"]
    for name, section in (("data", "synth"), ("profile", "profile"), ("train", "train")):
        assert section in stages[name]["params"]
        assert any(str(d).startswith("factory/") for d in stages[name]["deps"]), f"stage {name} must depend on its code"
    assert params["train"]["config"] in stages["train"]["cmd"] or "${train.config}" in stages["train"]["cmd"]


def test_every_dvc_dependency_exists():
    deps = [
        d for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values() for d in stage.get("deps", [])
    ]
    code = [d for d in deps if isinstance(d, str) and d.startswith("factory")]
    assert code and all((ROOT / d).exists() for d in code), [d for d in code if not (ROOT / d).exists()]


def test_dvc_understands_the_pipeline():
    dvc = shutil.which("dvc") or str(Path(__import__("sys").executable).parent / "dvc")
    result = subprocess.run([dvc, "dag", "--md"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for stage in ("data", "profile", "train"):
        assert stage in result.stdout


def _tiny_project(tmp_path, loose_targets) -> Path:
    """A project folder with the repository's params and pipeline at tiny sizes (loose budgets, 1 epoch)."""
    from factory.config import merge

    shutil.copytree(loose_targets, tmp_path / "targets")
    (tmp_path / "configs").mkdir()
    train_cfg = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    train_cfg["model"].update(architecture="tiny-cnn", image_size=[32, 32])
    train_cfg["train"].update(workers=0)
    (tmp_path / "configs" / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    gates = yaml.safe_load((ROOT / "configs" / "gates.yaml").read_text())
    gates["budgets"]["min_top1"] = None  # a one-epoch tiny model is not accurate
    gates["accuracy"]["inconclusive"] = "pass"  # a few dozen test images cannot resolve the shipped margin
    gates["remeasure"]["seconds"] = 1
    (tmp_path / "configs" / "gates.yaml").write_text(yaml.safe_dump(gates))
    search = {"objective": "p50_latency", "space": {"recipe.precision": ["fp32", "int8-static"]}, "bench_seconds": 1}
    (tmp_path / "configs" / "search-tiny.yaml").write_text(yaml.safe_dump(search))
    params = merge(
        yaml.safe_load((ROOT / "params.yaml").read_text()),
        {
            "synth": {"seed": 1, "per_class": 6, "size": "80x60", "split": "0.6,0.2,0.2"},
            "profile": {"samples_per_class": 2},
            "train": {"out": "models/tiny", "epochs": 1},
            "build": {"search_config": "configs/search-tiny.yaml"},  # the path the real main job takes
            "bench": {"seconds": 1},
            "fleet": {"devices": 100},
        },
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_main_command_end_to_end_on_tiny_params(tmp_path, loose_targets):
    """`factory run` with a tiny params file: dataset, profile, canonical model, a searched bundle per target,
    each published the one way (signed, packed, registered in MLflow under its target's alias); then reuse."""
    import mlflow

    _tiny_project(tmp_path, loose_targets)
    result = invoke("run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "main job finished" in result.stdout
    for f in (
        "data/synth/dataset.json",
        "reports/data/profile.json",
        "models/tiny/model_card.json",
        "models/tiny/model.onnx",
        "keys/signing.key",
        "reports/build/summary.md",
    ):
        assert (tmp_path / f).is_file(), f
    card = json.loads((tmp_path / "models/tiny/model_card.json").read_text())
    client = mlflow.MlflowClient()
    for target in ("cpu", "openvino", "tflite"):
        assert f"| {target} |" in result.stdout
        bundle = next((tmp_path / "bundles").glob(f"*/*/{target}"))
        assert (
            invoke("bundle", "verify", str(bundle), "--pubkey", str(tmp_path / "keys" / "signing.pub")).exit_code == 0
        )
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["lineage"]["search"]["verdict"].startswith("Winner:")
        lineage = manifest["lineage"]["mlflow"]  # the signed manifest leads back to its build run
        version = client.get_model_version_by_alias(card["name"], target)
        assert version.run_id == lineage["run_id"] and lineage["model_uri"] == f"models:/{card['name']}@{target}"
        assert client.get_run(lineage["run_id"]).data.tags["mlflow.parentRunId"] == card["lineage"]["mlflow"]["run_id"]
        report = json.loads((tmp_path / "reports/build" / f"{target}.json").read_text())
        assert report["mlflow"]["run_id"] == lineage["run_id"] and report["latency_source"].startswith(
            "search benchmark"
        )
    assert all(
        f"models:/{card['name']}@{t}" in result.stdout for t in ("cpu", "openvino", "tflite")
    )  # the summary says where
    assert "speedup vs eager" in result.stdout and "| pytorch-eager |" in result.stdout
    assert "recorded this run" in result.stdout and (tmp_path / "reports/baseline/report.json").is_file()
    assert "audit log:" in result.stdout and "rollout.create" in result.stdout and "release" in result.stdout
    assert (tmp_path / "reports/fleet-demo/summary.json").is_file() and (
        tmp_path / "reports/fleet-demo/fleet-manifest.json"
    ).is_file()
    snapshots = sorted(p.name for p in (tmp_path / "reports/fleet-demo").glob("*.html"))
    assert "status.html" in snapshots and any(n.startswith("rollout-") for n in snapshots)  # the fleet view, offline
    assert any(n.startswith("release-") for n in snapshots)
    again = invoke("run", cwd=tmp_path)
    assert again.exit_code in (0, 1), again.output  # 1 only if the gate saw a regression on this noisy machine
    assert "is current" in again.stderr
    assert "gate vs reports/baseline:" in again.stdout and "latency" in again.stdout


def test_dvc_repro_runs_the_whole_pipeline_on_tiny_params(tmp_path, loose_targets):
    """`dvc repro` from nothing to the gate's verdict (the first run records the baseline and says so)."""
    project = _tiny_project(tmp_path, loose_targets)
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(ROOT / "factory", project / "factory", ignore=shutil.ignore_patterns("__pycache__"))  # stage deps
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro"]):
        r = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env, timeout=1200)
        assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    verdict = json.loads((project / "reports" / "gate.json").read_text())
    assert verdict["passed"] is True and verdict["recorded_baseline"]
    for target in ("cpu", "openvino", "tflite"):
        assert json.loads((project / "reports" / "build" / f"{target}.json").read_text())["passed"] is True
    again = subprocess.run([dvc, "repro"], cwd=project, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "didn't change" in again.stdout + again.stderr  # nothing reruns


def test_main_command_reports_a_bad_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("synth:\n  seed: zero\n")
    result = invoke("run", cwd=tmp_path)
    assert result.exit_code == 2
    assert "'synth.seed' must be int" in result.stderr


def test_the_device_image_lints_clean_and_installs_one_runtime_without_torch():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    dockerfile = ROOT / "deploy" / "device" / "Dockerfile"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "[device-${RUNTIME}]" in text and "USER 10001" in text and "import torch" in text
    for src in [line.split()[1] for line in text.splitlines() if line.startswith("COPY") and "--from" not in line]:
        assert (ROOT / src).exists(), f"the device Dockerfile copies {src}, which is not in the repository"


def test_the_service_unit_verifies_and_handles_restarts_state_and_credentials(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "deploy" / "device" / "factory-agent.service").read_text()
    options = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith(("#", " ")))
    assert options["Restart"] == "always" and options["StateDirectory"] == "factory-agent"
    assert options["LoadCredential"].startswith("device-token:")  # the token as a credential, not an argument
    assert options["User"] == "factory-agent" and options["NoNewPrivileges"] == "yes"
    assert options["ProtectSystem"] == "strict"
    # verify a copy whose ExecStart names a binary that exists here (the board's /opt/factory-agent does not)
    local = tmp_path / "factory-agent.service"
    local.write_text(unit.replace("/opt/factory-agent/bin/factory", str(Path(sys.executable).parent / "factory")))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # warnings count as failures


@pytest.mark.parametrize("extra", ["device-litert", "device-onnxruntime", "device-openvino", "device-executorch"])
def test_a_device_install_never_pulls_torch_or_the_build_side(extra, tmp_path):
    """ExecuTorch's Python runtime imports torch, so its device extra carries torch (the docs say so), and
    nothing else of the build side."""
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert wheel.returncode == 0, wheel.stderr
    path = next(tmp_path.glob("edge_model_factory-*.whl"))
    report = tmp_path / "report.json"
    dry = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report)]
        + ["--constraint", str(ROOT / "requirements" / "constraints.txt"), f"{path}[{extra}]"],
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    runtime = {"device-litert": "ai-edge-litert", "device-onnxruntime": "onnxruntime", "device-openvino": "openvino"}
    assert runtime.get(extra, "executorch") in names and "httpx" in names
    build_side = {"torch", "torchvision", "jax", "transformers", "litert-torch", "nncf", "onnx", "mlflow", "matplotlib"}
    if extra == "device-executorch":
        assert "torch" in names
        build_side -= {"torch"}
    assert not names & build_side, sorted(names & build_side)


def _readme_commands() -> list[list[str]]:
    """Every `factory ...` command in the README's bash blocks, continuation lines joined."""
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            line = re.sub(r"^export \w+=\$\((.*)\)$", r"\1", line)  # export X=$(factory ...)
            if line.startswith("factory "):
                commands.append(shlex.split(line.rstrip("&").strip()))
    return commands


def test_every_command_the_readme_shows_exists_with_the_options_it_uses():
    """The README is short and must stay true: each command path resolves and takes every option shown."""
    commands = _readme_commands()
    assert len(commands) >= 10
    assert len((ROOT / "README.md").read_text().splitlines()) < 250  # the reference lives in docs/
    for words in commands:
        path = []
        for w in words[1:]:
            if w.startswith("-") or "/" in w or "." in w:
                break
            path.append(w)
        result = invoke(*path, "--help")
        assert result.exit_code == 0, (words, result.output)
        for opt in (w.split("=", 1)[0] for w in words if w.startswith("--")):
            assert opt in result.output, (words, opt)


def test_the_docs_reference_pages_are_generated_from_the_code(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    cli_page = gen.cli_page()
    from factory.cli import cli

    for name in cli.commands:
        assert f"`factory {name}`" in cli_page, name
    assert "`factory pipeline build`" in cli_page and "`factory model import`" in cli_page
    assert "**`SignatureError`** (exit 2)" in gen.errors_page()
    schemas = gen.schemas_page()
    assert "| `telemetry.evaluate_seconds` |" in schemas and "| `accuracy.max_drop_pt` |" in schemas
    assert "## `tflite`" in gen.targets_page()
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from pages(v)
        else:
            for v in node:
                yield from pages(v)

    for page in pages(nav):  # every page of the site exists (or is one the generator writes)
        assert (ROOT / "docs" / page).exists() or page.startswith("reference/"), page
