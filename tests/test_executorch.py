"""What the ExecuTorch modules do beyond the registry-walking tests: the batch-1 fallback, programs of
another origin, keep_float by graph node. (test_export.py, test_repair.py, test_reproducible.py and the
task tests build for ExecuTorch because its profile is registered.)"""

import numpy as np
import pytest
import torch

from factory.device.runtimes import get_runtime
from factory.errors import ExportError
from factory.export.base import get_backend

pytest.importorskip("executorch.exir")


class _BatchOfOne(torch.nn.Module):
    """A head that flattens with a literal batch of 1: torch.export cannot give it a dynamic batch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(1, -1))


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)) * 2.0)


class _Chunks(torch.nn.Module):
    """Splits its channels in two, as shufflenet's blocks do: an op returning a list of tensors."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        return self.fc((a * torch.relu(b)).mean((2, 3)))


def _eager(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


def _compiled(tmp_path, module, input_hw) -> tuple:
    """``module`` exported and compiled as a build does it: (the bundle folder, the compile facts)."""
    backend = get_backend("executorch")
    artifact = backend.export(tmp_path, onnx_path=None, module_factory=lambda: module, input_hw=input_hw)
    out = tmp_path / "bundle"
    out.mkdir()
    return out, backend.compile(artifact, out, backend.runtime, "fp32")


def test_a_model_without_a_dynamic_batch_is_lowered_at_batch_one_and_says_so(tmp_path):
    torch.manual_seed(0)
    module = _BatchOfOne().eval()
    out, facts = _compiled(tmp_path, module, (8, 8))
    assert facts["fixed_batch"] == 1 and facts["max_batch"] == 1 and "batch 1" in facts["batch_note"]
    assert facts["xnnpack_partitions"] >= 1
    rt = get_runtime("executorch")
    assert rt.declared_input_shape(out / "model.pte") == [1, 3, 8, 8]
    x = np.random.default_rng(0).normal(size=(5, 3, 8, 8)).astype(np.float32)
    got = rt.load(out, {})(x)  # the runner takes 5 images one at a time
    assert got.shape == (5, 5) and np.abs(got - _eager(module, x)).max() < 1e-4


def test_a_dynamic_program_takes_batches_up_to_its_bound_and_slices_beyond(tmp_path):
    torch.manual_seed(0)
    module = _Small().eval()
    out, facts = _compiled(tmp_path, module, (12, 10))
    assert facts["fixed_batch"] is None and 2 <= facts["max_batch"] <= 64  # what the memory plan holds
    rt = get_runtime("executorch")
    assert rt.declared_input_shape(out / "model.pte") == [None, 3, 12, 10]
    runner = rt.load(out, {})
    for n in (1, 7, facts["max_batch"], 130):  # 130 is over the bound: slices
        x = np.random.default_rng(n).normal(size=(n, 3, 12, 10)).astype(np.float32)
        assert np.abs(runner(x) - _eager(module, x)).max() < 1e-4, n


def test_edge_validation_still_pins_the_batch_of_ops_that_return_tensor_lists():
    """ExecuTorch 1.5's edge IR validator turns chunk's dynamic batch into the traced size: the reason the
    backend lowers such graphs again without that check. When this fails, the workaround can go."""
    from factory.export import executorch_backend as eb

    with pytest.raises(eb._Pinned):
        eb._lower(_Chunks().eval(), (torch.zeros(2, 3, 8, 8),), dynamic=True, check_ir=True)


@pytest.mark.parametrize("precision", ["fp32", "int8-static"])
def test_a_model_that_chunks_keeps_its_dynamic_batch_and_runs_every_batch(tmp_path, precision):
    torch.manual_seed(0)
    module = _Chunks().eval()
    backend = get_backend("executorch")
    artifact = backend.export(tmp_path, onnx_path=None, module_factory=lambda: module, input_hw=(8, 8))
    if precision != "fp32":
        calibration = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
        artifact, _ = backend.quantize(artifact, tmp_path, precision=precision, calibration=calibration,
                                       options={}, module_factory=lambda: module, input_hw=(8, 8))  # fmt: skip
    (tmp_path / "bundle").mkdir()
    facts = backend.compile(artifact, tmp_path / "bundle", backend.runtime, precision)
    assert facts["fixed_batch"] is None and "validator pins the batch" in facts["edge_ir_check"], facts
    runner = get_runtime("executorch").load(tmp_path / "bundle", {})
    for n in (1, 3, facts["max_batch"]):
        x = np.random.default_rng(n).normal(size=(n, 3, 8, 8)).astype(np.float32)
        assert np.abs(runner(x) - _eager(module, x)).max() < (1e-4 if precision == "fp32" else 0.1), n


def test_a_program_that_does_not_run_at_every_batch_it_declares_is_refused_with_the_runtimes_reason(tmp_path):
    """A program pinned to a batch of 2 that claims a bound of 64: the build's run check says why."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from factory.device.runtimes.executorch_runtime import MAX_BATCH_METHOD
    from factory.export import executorch_backend as eb

    program = torch.export.export(_Small().eval(), (torch.zeros(2, 3, 12, 10),))
    lowered = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()], constant_methods={MAX_BATCH_METHOD: 64}
    )
    (tmp_path / "fp32.pte").write_bytes(lowered.to_executorch().buffer)
    (tmp_path / "fp32.facts.json").write_text('{"xnnpack_partitions": 1, "layers": []}')
    with pytest.raises(eb._CannotRun, match="static tensor"):
        eb._run_check(tmp_path / "fp32.pte")
    (tmp_path / "bundle").mkdir()
    with pytest.raises(ExportError, match="cannot run this program: .*static tensor"):
        get_backend("executorch").compile(tmp_path / "fp32.pte", tmp_path / "bundle", "executorch", "fp32")


def test_a_program_exported_by_executorch_itself_runs_at_its_fixed_batch(tmp_path):
    """A .pte the factory did not write (no max_batch method, a fixed batch of 2): the runner pads the last slice."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(1)
    module = _Small().eval()
    program = torch.export.export(module, (torch.zeros(2, 3, 12, 10),))
    path = tmp_path / "theirs.pte"
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    rt = get_runtime("executorch")
    assert rt.declared_input_shape(path) == [2, 3, 12, 10]
    x = np.random.default_rng(2).normal(size=(5, 3, 12, 10)).astype(np.float32)
    got = rt.load_file(path, {"threads": 1})(x)
    assert got.shape == (5, 3) and np.abs(got - _eager(module, x)).max() < 1e-4


def test_keep_float_names_graph_nodes_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    module = _Small().eval()
    backend = get_backend("executorch")
    fp32 = backend.export(tmp_path, onnx_path=None, module_factory=lambda: module, input_hw=(12, 10))
    layers = backend.quantizable_layers(fp32)
    assert layers[0].startswith("conv2d") and any(n.startswith("linear") for n in layers) and "mul" in layers
    calibration = np.random.default_rng(0).normal(size=(8, 3, 12, 10)).astype(np.float32)
    kwargs = {"precision": "int8-static", "calibration": calibration, "module_factory": lambda: module}
    kwargs["input_hw"] = (12, 10)
    quantized, facts = backend.quantize(fp32, tmp_path, options={}, **kwargs)
    (tmp_path / "kept").mkdir()
    kept, kept_facts = backend.quantize(fp32, tmp_path / "kept", options={"keep_float": layers}, **kwargs)
    assert kept_facts["layers_kept_float"] == layers and "layers_kept_float" not in facts
    x = calibration[:4]
    rt = get_runtime("executorch")
    # every annotated node kept in float: the program computes what the fp32 one does; int8 does not
    assert np.abs(rt.load_file(kept, {})(x) - rt.load_file(fp32, {})(x)).max() < 1e-4
    assert np.abs(rt.load_file(quantized, {})(x) - rt.load_file(fp32, {})(x)).max() > 1e-4
    with pytest.raises(ExportError, match="not quantizable nodes"):
        backend.quantize(fp32, tmp_path, options={"keep_float": ["conv"]}, **kwargs)


def test_an_executorch_bundle_goes_through_search_bench_gate_publish_rollout_and_a_device(
    tmp_path, trained, synth_ds, keypair, loose_targets
):
    """Every stage after the build, for the runtime that was added by registration alone."""
    import json

    import sqlalchemy as sa
    import yaml

    from factory.registry import db
    from tests.conftest import ROOT, build_args, invoke
    from tests.registry_server import roll_out_and_run, start_registry

    # the search: fp32 against int8-static, benchmarked together; the winner is a signed bundle
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  recipe.precision: [fp32, int8-static]\nbench_seconds: 1\n")
    args = build_args(trained.path, "executorch", keypair, loose_targets, tmp_path / "b", "--no-track", "--search")
    result = invoke(*args, "--search-config", str(space), "--search-dir", str(tmp_path / "r"), "--data", str(synth_ds))
    assert result.exit_code == 0, result.output
    search = json.loads(next((tmp_path / "r").rglob("search.json")).read_text())
    assert {c["precision"] for c in search["candidates"]} == {"fp32", "int8-static"}
    assert sum(c["winner"] for c in search["candidates"]) == 1
    bundle = next((tmp_path / "b").glob("*/*/executorch"))

    # bench against PyTorch eager, a baseline, and the gate re-measuring both
    base, again = tmp_path / "baseline", tmp_path / "again"
    r = invoke("bench", str(trained.path), str(bundle), "--seconds", "0.5", "--save-baseline", str(base))
    assert r.exit_code == 0, r.output
    report = json.loads((base / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["kind"] != "canonical")
    assert row["runtime"]["backend"] == "executorch" and row["latency"]["p50_ms"] > 0 and row["accuracy"]["n"] > 0
    assert invoke("bench", str(trained.path), str(bundle), "--seconds", "0.5", "--out", str(again)).exit_code == 0
    policy = yaml.safe_load((ROOT / "configs" / "gates.yaml").read_text())
    policy["budgets"]["min_top1"], policy["accuracy"]["max_drop_pt"], policy["remeasure"]["seconds"] = None, 20.0, 1
    (tmp_path / "gates.yaml").write_text(yaml.safe_dump(policy))
    gate = invoke("gate", "--candidate", str(again), "--baseline", str(base), "--policy", str(tmp_path / "gates.yaml"))
    assert gate.exit_code in (0, 1) and "executorch" in gate.stdout, gate.output

    # publish, roll out to every device, and a device pulls, verifies, runs and reports it
    srv, _settings, engine, admin, tokens = start_registry(tmp_path / "reg", keypair[1], devices=("et-1",))
    try:
        answers, sent = roll_out_and_run(srv, admin, tokens["et-1"], bundle, device_id="et-1", target="executorch",
                                         state_dir=tmp_path / "state", trusted_pub=keypair[1],
                                         images=synth_ds / "images")  # fmt: skip
        assert all(a is not None and a[0] in trained.labels and 0 < a[1] <= 1 for a in answers), answers
        assert sent["sent"] == 1
        with engine.connect() as conn:
            row = conn.execute(sa.select(db.telemetry.c.release_key)).first()
        assert row is not None and row.release_key.endswith("/executorch")
    finally:
        srv.stop()
