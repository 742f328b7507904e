"""``factory pipeline build``: both stages per target, the chain validated end to end, one signed release."""

from __future__ import annotations

from .. import progress
from ..errors import ConfigError

__all__ = ["build_pipeline"]


def build_pipeline(
    config_path,
    targets,
    *,
    key_path,
    out_root="bundles",
    targets_dir=None,
    overrides=(),
    stage_overrides=(),
    cache_dir=".factory/cache",
    track=True,
) -> list[dict]:
    """One row per target: its release folder and end-to-end validation, or the error that stopped it.

    ``overrides`` (KEY=VALUE) apply to both stages' profile, ``stage_overrides`` (STAGE:KEY=VALUE) to one
    stage's: each stage may take its own recipe (the search's winner for that model and target)."""
    from ..bundle.pipeline import STAGES
    from ..bundle.signing import load_private_key
    from ..device.chain import bundle_stage, check_stages
    from ..export.targets import load_target
    from .build import Failure, build, isolated, load_context
    from .chain import canonical_stage, load_chain_config
    from .chain_release import assemble_release, chain_latency, field_profile, validate_chain

    config = load_chain_config(config_path)  # its paths are relative to the folder the command runs in
    key = load_private_key(key_path)
    per_stage = {st: tuple(overrides) for st in STAGES}
    for item in stage_overrides:
        stage, _, kv = item.partition(":")
        if stage not in STAGES or "=" not in kv:
            raise ConfigError(f"--stage-set {item!r} is not STAGE:KEY=VALUE with STAGE one of {list(STAGES)}",
                              hint="e.g. --stage-set classify:recipe.precision=int8-static")  # fmt: skip
        per_stage[stage] += (kv,)
    profiles = {t: load_target(t, targets_dir, tuple(overrides)) for t in targets}  # bad names stop here
    for t in targets:
        for st in STAGES:
            load_target(t, targets_dir, per_stage[st])  # and bad keys or values of either stage
    reference = (canonical_stage(config["localise"]), canonical_stage(config["classify"]))
    check_stages(*reference)
    contexts = {s: load_context(config[s]) for s in STAGES}
    rows = []
    for target in targets:
        progress.info(f"pipeline {config['name']} {config['version']}: {target}")
        built = {}
        for s in STAGES:
            result = isolated(
                target,
                profiles[target]["backend"],
                lambda s=s, target=target: build(
                    config[s], target, key_path=key_path, out_root=out_root, targets_dir=targets_dir,
                    overrides=per_stage[s], cache_dir=cache_dir, track=track, context=contexts[s],
                ),
            )  # fmt: skip
            if isinstance(result, Failure):
                built = result.text
                break
            if not result.passed:
                built = f"the {s} stage's bundle failed its budgets ({result.folder})"
                break
            built[s] = result.folder
        if isinstance(built, str):
            rows.append({"target": target, "passed": False, "error": built})
            continue
        candidate = tuple(bundle_stage(built[s], key.public_key()) for s in STAGES)
        try:
            validation = validate_chain(config["data"], reference, candidate, config["accuracy"])
        except ConfigError as exc:
            rows.append({"target": target, "passed": False, "error": str(exc)})
            continue
        release = assemble_release(
            config, target, built, validation, key, out_root,
            profile=field_profile(config["data"], reference), latency=chain_latency(config["data"], candidate),
        )  # fmt: skip
        progress.info(f"  {target}: end to end {validation['why']}; release {release}")
        rows.append({"target": target, "passed": validation["passed"], "validation": validation,
                     "release": str(release)})  # fmt: skip
    return rows
