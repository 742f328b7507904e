"""Every registered task through structured pruning, the int8 repair and the recipe search, in one
parametrised test that walks the task registry: a task is checked through these stages the day it is
registered (it needs a tiny dataset of its annotation kind below, or this test fails and says so)."""

from __future__ import annotations

import json

import pytest
import yaml

from factory.tasks import get_task, task_names
from tests.conftest import build_args, invoke, write_train_config

# a tiny dataset per annotation kind (session fixtures of conftest); the synthetic photos carry labels and quads
DATASET_OF = {"label": "synth_ds", "quad": "synth_ds", "boxes": "frames_ds"}
INPUT_OF = {"boxes": [64, 80]}  # a detector needs room for several documents


def _profile(loose_targets, tmp_path, budget: str) -> None:
    """The cpu profile with a search over int8 and pruning, and the task's own quality budget at 0: every int8
    candidate misses it on validation, so the repair runs (and is judged by that budget)."""
    profile = yaml.safe_load((loose_targets / "cpu.yaml").read_text())
    profile["budgets"][budget] = 0.0
    profile["recipe"]["pruning"] |= {"finetune_epochs": 1}
    profile["search"] = {"objective": "p50_latency", "bench_seconds": 1, "budget_minutes": 15,
                         "space": {"recipe.precision": ["fp32", "int8-static"],
                                   "recipe.pruning": ["none", "structured:0.5"]}}  # fmt: skip
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "edge.yaml").write_text(yaml.safe_dump(profile))


@pytest.mark.slow
@pytest.mark.parametrize("name", task_names())
def test_every_task_is_pruned_repaired_and_searched_by_its_own_metric(name, request, keypair, loose_targets, tmp_path):
    task = get_task(name)
    assert task.annotation in DATASET_OF, f"task {name} needs a tiny {task.annotation!r} dataset in DATASET_OF"
    data = request.getfixturevalue(DATASET_OF[task.annotation])
    cfg = write_train_config(tmp_path / "t.yaml", data / "dataset.json", tmp_path / "model", model__task=name,
                             model__image_size=INPUT_OF.get(task.annotation, [32, 32]),
                             tracking__log_model=False)  # fmt: skip
    trained = invoke("train", "--config", str(cfg))
    assert trained.exit_code == 0, trained.output
    q = task.quality
    _profile(loose_targets, tmp_path, q.budget)
    args = build_args(tmp_path / "model", "edge", keypair, tmp_path / "t", tmp_path / "b", "--search", "--search-dir",
                      str(tmp_path / "s"), "--data", str(data), "--no-track")  # fmt: skip
    r = invoke(*args)
    assert r.exit_code in (0, 1), r.output  # 1: no candidate met the budgets; the search still reports them all
    summary = json.loads((tmp_path / "s" / "edge" / "search.json").read_text())
    rows = {row["label"]: row for row in summary["candidates"]}
    assert len(rows) == 4 and all(row.get("quality_name") == q.name for row in rows.values()), rows
    # the report speaks of this task's budgets only
    others = {get_task(n).quality.budget for n in task_names()} - {q.budget}
    assert q.budget in summary["budgets"] and not others & set(summary["budgets"]), summary["budgets"]
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "search").glob("*/edge/*/manifest.json")]
    assert not others & set(manifests[0]["validation"]["budgets"])
    pruned = [m for m in manifests if (m["recipe"].get("pruning_applied") or {}).get("method") == "structured"]
    assert pruned, "no pruned candidate was built"
    for m in pruned:  # fine-tuned by the task's loss, best epoch by its primary metric; fewer MACs
        facts = m["recipe"]["pruning_applied"]
        assert list(facts["best_val"]) == [task.primary] and facts["mac_reduction"] > 1.0, facts
        assert m["validation"]["task"] == name
    repaired = [(m["recipe"].get("quantization_applied") or {}).get("repair") for m in manifests]
    repaired = [rep for rep in repaired if rep and rep.get("attempts")]
    assert repaired, "no int8 candidate went through the repair"
    assert all(a["val"]["budget"] == q.budget for rep in repaired for a in rep["attempts"]), repaired
