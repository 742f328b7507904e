"""Targets built as tasks of an executor: a worker process (the default) or Ray (``--executor ray``).

Each worker loads the canonical model, builds and signs its target's bundle into a staging folder of the
shared cache (``--cache-dir``, a filesystem every node mounts, as for a search), and returns where. This
process then publishes the bundles one by one, exactly as an in-process build does (final folder,
archive, MLflow run and registered version): the registry and MLflow see one writer, and the bundles
are the ones an in-process build writes (the same files; latency probed on the worker's host, which
the manifest records).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from .. import progress
from ..bundle.manifest import bundle_dir, resolve_version
from ..bundle.signing import load_private_key
from ..errors import BundleError, InputError
from .build import BuildContext, Failure, check_resolvable, isolated, load_context, make_bundle
from .executor import absolute
from .publish import publish

__all__ = ["build_on", "stage_remote"]

SHARED_HINT = (
    "the model, the dataset, the profiles, the signing key and --cache-dir must be at the same paths on every "
    "node (a shared filesystem); see the Ray worker's log, or build in this process with --executor local"
)


_CONTEXT: dict = {}  # a reused worker builds the targets of one command from one decoded test split


def _context(model_dir, data) -> BuildContext:
    """The build context, kept for the worker's next task of the same model and data (files unchanged)."""
    from .._io import sha256_file

    card = Path(model_dir) / "model_card.json"
    key = (str(model_dir), str(data), sha256_file(card) if card.is_file() else None)
    if key not in _CONTEXT:
        _CONTEXT.clear()
        _CONTEXT[key] = load_context(model_dir, data)
    return _CONTEXT[key]


def stage_remote(spec: dict) -> dict:
    """On a worker: build and sign one target's bundle into ``spec["staging"]``; a failure is returned with
    its stage (a bad input raises, and the driver records it as the target's failure: on a worker it is
    usually a path this node does not see)."""
    from ..export.targets import load_target

    target = spec["target"]
    try:
        ctx = _context(spec["model_dir"], spec["data"])
        profile = load_target(target, spec["targets_dir"], tuple(spec["overrides"]))
        make_bundle(ctx, profile, Path(spec["staging"]), load_private_key(spec["key_path"]), spec["version"],
                    Path(spec["cache_dir"]))  # fmt: skip
        return {"staging": spec["staging"]}
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded with its stage, as an in-process build records it
        return {"failure": Failure.of(target, spec.get("backend"), exc).to_dict()}


def _publish_one(spec: dict, o, out_root, name: str, version: str, profiles: dict, key, track: bool):
    """A worker's outcome for one target: its failure, or the staged bundle published to its final folder."""
    t, backend = spec["target"], spec["backend"]
    if o.error:
        return Failure(t, backend, o.stage or "cluster", None, o.error, o.hint or SHARED_HINT)
    if "failure" in o.value:
        return Failure(**{k: v for k, v in o.value["failure"].items() if k != "passed"})
    dest = bundle_dir(Path(out_root), name, version, profiles[t]["name"])
    try:
        return isolated(t, backend, lambda: publish(Path(o.value["staging"]), dest, key, track=track))
    except BundleError as exc:  # the worker wrote where this process cannot read
        return Failure(t, backend, "publish", None, exc.message, SHARED_HINT)


def build_on(executor, ctx: BuildContext, profiles: dict, *, model_dir, key_path, data, out_root, version,
             targets_dir, overrides, cache_dir, track) -> list:  # fmt: skip
    """Every target of ``profiles`` as a task of ``executor``; then each bundle published here. Returns a
    BuildResult or a Failure per target, in order."""
    from ..export.targets import targets_dir as profiles_folder

    card = ctx.canonical.card
    version = resolve_version(Path(out_root), card["name"], ctx.canonical.identity, version)
    key = load_private_key(key_path)
    staging = Path(cache_dir).resolve() / "staging"
    common = {"model_dir": absolute(model_dir or ctx.canonical.path), "data": absolute(data or ctx.dataset.location),
              "targets_dir": absolute(profiles_folder(targets_dir)), "overrides": list(overrides),
              "key_path": absolute(key_path), "version": version, "cache_dir": absolute(cache_dir)}  # fmt: skip
    specs, results = [], {}
    for t, profile in profiles.items():
        checked = isolated(t, profile["backend"], lambda p=profile: check_resolvable(ctx, p))
        if isinstance(checked, Failure):
            results[t] = checked
            continue
        specs.append(common | {"target": t, "backend": profile["backend"],
                               "staging": str(staging / f"{t}-{uuid.uuid4().hex[:12]}" / "bundle")})  # fmt: skip
    # each build probes its latency: reserve the cores its runtime uses (all a node has when it says none),
    # so no other task shares them
    largest = executor.largest_node_cpus()
    cpus = min(max(p["runtime"].get("threads") or largest for p in profiles.values()), largest)
    progress.info(f"building {len(specs)} target(s) as {executor.name} tasks ({cpus:g} CPU each)")
    try:
        outcomes = executor.map(stage_remote, [(s,) for s in specs], what="target build", cpus=cpus)
        for spec, o in zip(specs, outcomes, strict=True):
            results[spec["target"]] = _publish_one(spec, o, out_root, card["name"], version, profiles, key, track)
    finally:
        for spec in specs:  # with the .partial folders a dead worker may have left beside its bundle
            shutil.rmtree(Path(spec["staging"]).parent, ignore_errors=True)
    return [results[t] for t in profiles]
