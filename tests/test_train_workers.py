"""`factory train --workers N`: data-parallel training (DDP over gloo) in N real processes."""

from __future__ import annotations

import json

import pytest

from factory.train.distributed import Ranks, epoch_batches
from tests.conftest import invoke, write_train_config


def _card(folder) -> dict:
    return json.loads((folder / "model_card.json").read_text())


def _runs(experiment: str = "factory") -> int:
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    return 0 if exp is None else len(mlflow.search_runs([exp.experiment_id]))


def test_ranks_split_every_global_batch_and_scale_to_its_mean():
    batches = epoch_batches(50, 16, seed=3, epoch=1)
    assert [len(b) for b in batches] == [16, 16, 16]  # the partial last batch is dropped
    assert batches == epoch_batches(50, 16, seed=3, epoch=1) != epoch_batches(50, 16, seed=3, epoch=2)
    assert [len(b) for b in epoch_batches(10, 16, seed=0, epoch=0)] == [10]  # a split smaller than a batch
    for world in (2, 3):
        ranks = [Ranks(r, world) for r in range(world)]
        for b in [*batches, list(range(7))]:  # and an uneven one
            parts = [r.part(b) for r in ranks]
            assert sum(parts, []) == b  # every image once, in order
            # each image's weight in DDP's average of the ranks' scaled local means is 1 / global batch
            for r, p in zip(ranks, parts, strict=True):
                assert r.scale(b) / len(p) / world == pytest.approx(1 / len(b))


def test_two_workers_reproduce_themselves_and_log_one_mlflow_run(tmp_path, synth_ds):
    import signal

    import mlflow

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    outs = []
    for i in range(2):
        out = tmp_path / f"m{i}"
        cfg = write_train_config(tmp_path / f"t{i}.yaml", synth_ds / "dataset.json", out)
        before = _runs()
        result = invoke("train", "--config", str(cfg), "--workers", "2")
        assert result.exit_code == 0, result.output
        assert _runs() == before + 1  # one run, however many workers
        outs.append(out)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the launcher's handlers are gone: Ctrl-C works
    a, b = (_card(o) for o in outs)
    assert a["files"]["weights"]["sha256"] == b["files"]["weights"]["sha256"]  # same seed, same N: same weights
    assert a["metrics"]["training"]["workers"] == 2 and a["metrics"]["training"]["backend"] == "gloo"
    run_id = a["lineage"]["mlflow"]["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.tags["factory.workers"] == "2" and run.data.params["distributed.workers"] == "2"
    history = mlflow.MlflowClient().get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]  # rank 0 logs each epoch once


def test_two_workers_train_what_one_would_within_tolerance(tmp_path, synth_ds, trained):
    """The same global batches and the mean gradient over them: the per-epoch training loss of 2 workers stays
    within 0.1 of one worker's (BatchNorm statistics per worker and dropout masks differ)."""
    out = tmp_path / "m"
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", out)
    assert invoke("train", "--config", str(cfg), "--workers", "2").exit_code == 0
    one = [h["train_loss"] for h in trained.card["history"]]
    two = [h["train_loss"] for h in _card(out)["history"]]
    assert len(one) == len(two) == 2
    assert max(abs(x - y) for x, y in zip(one, two, strict=True)) < 0.1, (one, two)
    assert trained.card["files"]["weights"]["sha256"] != _card(out)["files"]["weights"]["sha256"]


def test_workers_too_many_for_the_batch_are_refused_before_starting(tmp_path, synth_ds):
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "m", train__batch_size=4)
    result = invoke("train", "--config", str(cfg), "--workers", "3")
    assert result.exit_code == 2
    assert "3 workers split batches of 4 images" in result.output and "train.batch_size to 6" in result.output
    assert not (tmp_path / "m").exists()


def test_a_localisation_model_trains_on_two_workers(tmp_path, synth_ds):
    """The tasks that say where things are share the DDP loop: a document-localisation model on 2 workers."""
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "m",
                             model__task="document-localisation", tracking__log_model=False)  # fmt: skip
    result = invoke("train", "--config", str(cfg), "--workers", "2")
    assert result.exit_code == 0, result.output
    card = _card(tmp_path / "m")
    assert card["task"] == "document-localisation" and card["metrics"]["training"]["workers"] == 2
    assert [h["epoch"] for h in card["history"]] == [1, 2] and 0 <= card["metrics"]["test"]["quad_iou"] <= 1


def test_a_worker_that_fails_reports_the_factory_error_it_raised(tmp_path, synth_ds):
    """An image only the workers decode is corrupt: the error is the DataError a worker raised (exit 2, the
    file named), not a launcher traceback, and nothing is written."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_ds, data)
    victim = sorted(data.rglob("*.jpg"))[0]
    victim.write_bytes(b"not an image")
    cfg = write_train_config(tmp_path / "t.yaml", data / "dataset.json", tmp_path / "m")
    result = invoke("train", "--config", str(cfg), "--workers", "2")
    assert result.exit_code == 2, result.output
    assert "cannot decode" in result.output and victim.name in result.output and "re-import" in result.output
    assert not (tmp_path / "m").exists()


def test_two_nodes_train_the_model_two_workers_on_one_node_train(tmp_path, synth_ds):
    """Two `factory train --nodes 2` processes meet at a loopback rendezvous (as two machines would): one
    writes the model, the other says where it went, and the weights are bit-identical to 2 workers on one
    node (the same ranks, the same arithmetic; one torch thread each, so the sums run in the same order)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.registry_server import free_port

    exe = str(Path(sys.executable).with_name("factory"))
    rendezvous = f"127.0.0.1:{free_port()}"
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "nodes",
                             train__threads=1, tracking__log_model=False)  # fmt: skip
    args = [exe, "-q", "train", "--config", str(cfg), "--workers", "1", "--nodes", "2", "--rendezvous", rendezvous]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    wrote = [any(line.startswith("wrote ") for line in o.splitlines()) for o in outs]
    assert sorted(wrote) == [False, True], outs  # one node wrote the model...
    assert "the node that held rank 0 wrote" in outs[wrote.index(False)]  # ...the other says where it went
    card = _card(tmp_path / "nodes")
    assert card["metrics"]["training"]["workers"] == 2 and card["metrics"]["training"]["nodes"] == 2

    one = write_train_config(tmp_path / "o.yaml", synth_ds / "dataset.json", tmp_path / "one",
                             train__threads=1, tracking__log_model=False)  # fmt: skip
    assert invoke("train", "--config", str(one), "--workers", "2").exit_code == 0
    assert _card(tmp_path / "one")["files"]["weights"]["sha256"] == card["files"]["weights"]["sha256"]


def test_several_nodes_need_a_rendezvous(tmp_path, synth_ds):
    cfg = write_train_config(tmp_path / "t.yaml", synth_ds / "dataset.json", tmp_path / "m")
    result = invoke("train", "--config", str(cfg), "--nodes", "2")
    assert result.exit_code == 2 and "--rendezvous HOST:PORT" in result.output
    result = invoke("train", "--config", str(cfg), "--nodes", "2", "--rendezvous", "no-port")
    assert result.exit_code == 2 and "not 'no-port'" in result.output
