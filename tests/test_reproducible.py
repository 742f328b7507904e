"""Same commit and inputs, same bundles: builds from an empty cache give identical model files."""

import hashlib

import pytest

from tests.conftest import TARGET_OF, build_args, invoke

CASES = [(target, "int8-static", "structured:0.5") for target in sorted(TARGET_OF.values())]


def _digest(folder) -> dict:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix != ".sig" and p.name != "manifest.json"
    }


@pytest.mark.parametrize("target,precision,prune", CASES, ids=[c[0] for c in CASES])
def test_two_builds_from_an_empty_cache_give_identical_model_files(
    tmp_path, trained, synth_ds, keypair, loose_targets, target, precision, prune
):
    files = []
    for run in ("a", "b"):  # each with its own cache: the pruned fine-tune, the export and the quantization again
        out = tmp_path / run
        r = invoke(
            *build_args(
                trained.path,
                target,
                keypair,
                loose_targets,
                out / "bundles",
                "--data",
                str(synth_ds),
                "--no-track",
                "--precision",
                precision,
                "--prune",
                prune,
                "--set",
                "recipe.pruning.finetune_epochs=1",
            )
        )
        assert r.exit_code == 0, r.output
        files.append(_digest(next((out / "bundles").glob(f"*/*/{target}"))))
    assert files[0] == files[1]
