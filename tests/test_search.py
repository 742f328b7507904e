"""Recipe search on the tiny model: cache, Pareto report, budgets, failures."""

import json

import yaml

from tests.conftest import invoke


def _profile(folder, loose_targets, name, space, **budgets):
    profile = yaml.safe_load((loose_targets / "cpu.yaml").read_text())
    profile["search"] = {"objective": "p50_latency", "space": space, "bench_seconds": 1, "budget_minutes": 10}
    profile["budgets"].update(budgets)
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _search(trained, keypair, targets, tmp_path, name, *extra):
    return invoke("build", "--search", "--target", name, "--model", str(trained.path), "--key", str(keypair[0]),
                  "--targets-dir", str(targets), "--out", str(tmp_path / "bundles"), "--cache-dir", str(tmp_path / "cache"),
                  "--search-dir", str(tmp_path / "search"), "--no-track", *extra)


SPACE = {"recipe.precision": ["fp32", "int8-static"], "runtime.threads": [1, 2]}


def test_search_picks_a_winner_and_caches_everything(tmp_path, trained, keypair, loose_targets):
    targets = _profile(tmp_path / "targets", loose_targets, "edge", SPACE)
    first = _search(trained, keypair, targets, tmp_path, "edge")
    assert first.exit_code == 0, first.output
    assert "Winner:" in first.stdout
    summary = json.loads((tmp_path / "search" / "edge" / "search.json").read_text())
    assert summary["counts"]["measured"] == 4 and summary["counts"]["from_cache"] == 0
    assert sum(r["winner"] for r in summary["candidates"]) == 1
    assert any(r["pareto"] for r in summary["candidates"])
    assert (tmp_path / "search" / "edge" / "pareto.png").stat().st_size > 5000
    manifest = json.loads(next((tmp_path / "bundles").glob("*/*/edge/manifest.json")).read_text())
    assert len(manifest["lineage"]["search"]["candidates"]) == 4
    winner = next(r for r in summary["candidates"] if r["winner"])
    assert manifest["runtime"]["options"]["threads"] == winner["overrides"].get("runtime.threads", 2)
    assert invoke("bundle", "verify", str(next((tmp_path / "bundles").glob("*/*/edge"))), "--pubkey", str(keypair[1])).exit_code == 0
    second = _search(trained, keypair, targets, tmp_path, "edge")
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "search" / "edge" / "search.json").read_text())
    assert again["counts"]["from_cache"] == 4 and again["benchmark_cached"] is True
    assert [r["winner"] for r in again["candidates"]] == [r["winner"] for r in summary["candidates"]]


def test_an_int8_candidate_slower_than_fp32_is_never_chosen(tmp_path, trained, keypair, loose_targets):
    targets = _profile(tmp_path / "targets", loose_targets, "edge", SPACE)
    assert _search(trained, keypair, targets, tmp_path, "edge").exit_code == 0
    rows = json.loads((tmp_path / "search" / "edge" / "search.json").read_text())["candidates"]
    winner = next(r for r in rows if r["winner"])
    for r in rows:
        if r.get("p50_ms") is not None and r["status"] == "feasible" and r["accuracy_drop_pt"] <= winner["accuracy_drop_pt"]:
            assert winner["p50_ms"] <= r["p50_ms"]


def test_empty_search_space(tmp_path, trained, keypair, loose_targets):
    targets = _profile(tmp_path / "targets", loose_targets, "edge", {})
    result = _search(trained, keypair, targets, tmp_path, "edge")
    assert result.exit_code == 2
    assert "search.space is empty" in result.stderr


def test_budgets_no_candidate_meets(tmp_path, trained, keypair, loose_targets):
    targets = _profile(tmp_path / "targets", loose_targets, "edge", {"recipe.precision": ["fp32", "int8-static"]}, max_size_mb=0.00001)
    result = _search(trained, keypair, targets, tmp_path, "edge")
    assert result.exit_code == 1
    assert "No candidate meets the budgets; closest:" in result.stderr and "size " in result.stderr and "violates <= 1e-05 MB" in result.stderr
    assert not list((tmp_path / "bundles").glob("*/*/edge")) if (tmp_path / "bundles").exists() else True
    summary = json.loads((tmp_path / "search" / "edge" / "search.json").read_text())
    assert all(r["status"] == "rejected" for r in summary["candidates"])


def test_a_failing_candidate_is_recorded_and_the_search_goes_on(tmp_path, trained, keypair, loose_targets):
    # an optimisation level ONNX Runtime does not know: the compile step of that candidate fails
    space = {"recipe.precision": ["fp32"], "runtime.graph_optimization": ["extended", "warp-speed"]}
    targets = _profile(tmp_path / "targets", loose_targets, "edge", space)
    result = _search(trained, keypair, targets, tmp_path, "edge")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "search" / "edge" / "search.json").read_text())["candidates"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "warp-speed" in failed[0]["label"] and "warp-speed" in failed[0]["reason"]
    assert any(r["winner"] for r in rows)
