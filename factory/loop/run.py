"""``factory loop run``: an open retraining trigger and a dataset version in, a staged rollout out.

1. **trigger**: the newest open ``retrain.trigger`` of the model in the registry's audit log (or the one
   named); it says which release drifted and which data, config and weights it came from;
2. **retrain**: warm start from the current canonical weights, with the config of its lineage, on the
   new dataset version;
3. **build** every target the stable release has;
4. **gate**: the candidate bundle against the stable one, image by image, on the old test split and on the
   field slice's test part apart (Tango's paired interval of the top-1 drop against the margin on
   both: the old cases must not get worse, and neither may the field);
5. **publish** the bundles and **create a rollout** from the plan;
6. **close** the trigger with the new release's lineage.

Every step is an audit entry (``loop.*``) in the registry, beside the rollout's own.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import progress
from .._io import read_json
from ..bundle.manifest import parse_version
from ..data.manifest import load_manifest
from ..errors import InputError, ValidationError
from ..proportions import non_inferiority

__all__ = ["open_triggers", "stable_releases", "retrain", "gate_candidate", "run_loop", "next_version"]


def open_triggers(client, model: str | None = None) -> list[dict]:
    """Retraining triggers not closed yet (newest first): ``{"id", "ts", "detail"}``."""
    entries = client.audit(limit=10_000)
    closed = {e["detail"].get("trigger_id") for e in entries if e["action"] == "retrain.closed"}
    out = [
        e for e in entries
        if e["action"] == "retrain.trigger" and e["id"] not in closed
        and (model is None or str(e["detail"].get("release", "")).startswith(f"{model}/"))
    ]  # fmt: skip
    return sorted(out, key=lambda e: -e["id"])


def stable_releases(client, model: str) -> dict[str, str]:
    """target -> the stable release key of ``model``."""
    return {s["target"]: s["release"] for s in client.call("GET", "/v1/health")["stable"] if s["model"] == model}


def next_version(client, model: str) -> str:
    """One patch above the newest published version of ``model``."""
    versions = [parse_version(r["version"])[:3] for r in client.releases(model)]
    major, minor, patch = max(versions) if versions else (0, 1, -1)
    return f"{major}.{minor}.{patch + 1}"


def _audit(client, action: str, detail: dict, rollout: str | None = None) -> None:
    client.call(
        "POST", "/v1/audit", json={"action": action, "detail": detail} | ({"rollout": rollout} if rollout else {})
    )


def retrain(canonical_dir: Path, dataset: Path, out: Path, *, epochs: int | None = None, lr: float | None = None):
    """Warm start from ``canonical_dir``'s weights with its own training config, on ``dataset``."""
    from ..config import load_config
    from ..train.canonical import load_canonical
    from ..train.loop import train
    from ..train.schema import TRAIN_SCHEMA

    base = load_canonical(canonical_dir)
    cfg = base.card["lineage"].get("config_values")
    if not cfg:
        raise InputError(f"{canonical_dir}: the model card has no training config (lineage.config_values)")
    overrides = [
        f"data.manifest={Path(dataset) / 'dataset.json'}",
        f"model.pretrained={base.weights}",
        f"output.dir={out}",
        f"train.epochs={epochs or max(2, cfg['train']['epochs'] // 3)}",
        f"train.lr={lr or cfg['train']['lr'] / 3}",
        "train.warmup_epochs=0",
        "distributed.nodes=1",  # retrain here: the nodes the original ran on are not waiting for it
        "distributed.rendezvous=null",
    ]
    import yaml

    path = Path(out).parent / f"{Path(out).name}.train.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return train(load_config(str(path), TRAIN_SCHEMA, overrides), config_path=str(path))


def _correct(runner, manifest, records, spec, labels) -> np.ndarray:
    from ..data.splits import read_images
    from ..preprocess import preprocess

    x = preprocess(read_images(manifest, records), spec)
    out = np.concatenate([runner(np.ascontiguousarray(x[i : i + 32])) for i in range(0, len(x), 32)])
    index = {c: i for i, c in enumerate(labels)}
    return out.argmax(1) == np.array([index[r.label] for r in records])


def gate_candidate(candidate: Path, stable: Path, dataset: Path, *, margin: float = 1.0, public_key=None) -> dict:
    """The candidate bundle against the stable one on the old test split and on the field slice's test part."""
    from ..device.loader import open_bundle

    m = load_manifest(dataset)
    cm, cand = open_bundle(candidate, public_key)
    sm, stab = open_bundle(stable, public_key)
    if cm.validation.get("task", "classification") != "classification":
        raise InputError("the loop's gate judges classification models (top-1) for now")
    parts = {"old test split": m.subset("test", slice=None)}
    for s in m.slices():
        parts[f"field slice {s} (test part)"] = m.subset("test", slice=s)
    out = {"margin_pt": margin, "parts": {}}
    for name, recs in parts.items():
        if not recs:
            out["parts"][name] = {"n": 0, "verdict": "inconclusive", "why": "no images in this part"}
            continue
        recs = sorted(recs, key=lambda r: r.path)
        ok_c = _correct(cand, m, recs, cm.preprocessing, cm.labels)
        ok_s = _correct(stab, m, recs, sm.preprocessing, sm.labels)
        lost, gained = int((ok_s & ~ok_c).sum()), int((~ok_s & ok_c).sum())
        r = non_inferiority(lost, gained, len(recs), margin)
        out["parts"][name] = {
            "n": len(recs),
            "candidate_top1": round(float(ok_c.mean()), 6),
            "stable_top1": round(float(ok_s.mean()), 6),
            "drop_pt": round(r["drop_pt"], 4),
            "interval_pt": [round(v, 4) for v in r["interval_pt"]],
            "verdict": r["verdict"],
            "why": r["why"],
        }
    out["passed"] = all(p["verdict"] == "pass" for p in out["parts"].values())
    return out


def _bundle_of(client, release_key: str, work: Path, public_key=None) -> Path:
    """The stable release's bundle from the registry (downloaded, hash-checked, unpacked)."""
    from ..bundle.archive import unpack

    name, version, target = release_key.split("/")
    info = client.call("GET", f"/v1/releases/{name}/{version}/{target}")
    work.mkdir(parents=True, exist_ok=True)
    archive = work / f"{info['sha256']}.tar.gz"
    folder = work / info["sha256"][:16]
    if not folder.is_dir():
        client.download(f"/v1/releases/{name}/{version}/{target}/bundle", archive, info["sha256"], info["size"])
        unpack(archive, folder, trusted_keys=[public_key] if public_key else None)
    return folder


def run_loop(
    client,
    *,
    dataset: str | Path,
    canonical: str | Path,
    key_path: str | Path,
    plan: dict,
    out: str | Path,
    trigger_id: int | None = None,
    epochs: int | None = None,
    margin: float = 1.0,
    targets_dir: str | None = None,
    overrides: tuple[str, ...] = (),
    public_key=None,
) -> dict:
    """The loop from a trigger and a dataset version to a rollout (see the module docstring)."""
    from ..pipeline.build import build

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    version_manifest = load_manifest(dataset)
    name = version_manifest.name
    card_name = read_json(Path(canonical) / "model_card.json")["name"]
    triggers = open_triggers(client, card_name)
    trigger = next((t for t in triggers if t["id"] == trigger_id), None) if trigger_id else (triggers or [None])[0]
    if trigger_id and trigger is None:
        raise InputError(f"retraining trigger {trigger_id} is not open (closed, or not of model {card_name})")
    summary: dict = {"trigger": trigger, "dataset": str(dataset), "steps": []}
    started = time.perf_counter()
    _audit(client, "loop.start", {"trigger_id": trigger and trigger["id"], "dataset": name,
                                  "dataset_hash": version_manifest.dataset_hash})  # fmt: skip
    stable = stable_releases(client, card_name)
    if not stable:
        raise InputError(f"model {card_name} has no stable release to gate the candidate against")
    from ..export.targets import load_target

    for target in stable:  # every profile the candidate is built for, checked before the training is spent
        load_target(target, targets_dir, overrides)
    progress.info(f"loop: retraining {card_name} on {name} (warm start from {canonical})")
    model = retrain(Path(canonical), Path(dataset), out / "model", epochs=epochs)
    run_id = model.card["lineage"]["mlflow"]["run_id"]
    _audit(client, "loop.retrain", {"model": str(model.path), "mlflow_run": run_id,
                                    "test_top1": model.card["metrics"]["test"].get("top1")})  # fmt: skip
    version = next_version(client, card_name)
    built, gates = {}, {}
    for target, key in sorted(stable.items()):
        r = build(model.path, target, key_path=key_path, data=str(dataset), out_root=out / "bundles", version=version,
                  targets_dir=targets_dir, overrides=overrides, track=True)  # fmt: skip
        built[target] = r
        stable_bundle = _bundle_of(client, key, out / "stable", public_key)
        gates[target] = gate_candidate(r.folder, stable_bundle, Path(dataset), margin=margin, public_key=public_key)
        progress.info(
            f"loop: gate {target}: " + "; ".join(f"{n}: {p['why']}" for n, p in gates[target]["parts"].items())
        )
    passed = all(g["passed"] for g in gates.values())
    _audit(client, "loop.gate", {"version": version, "passed": passed, "gates": gates})
    summary |= {"version": version, "model": str(model.path), "mlflow_run": run_id, "gates": gates, "passed": passed}
    if not passed:
        raise ValidationError(
            f"the candidate {card_name} {version} did not pass the loop's gate; nothing was published",
            report=summary,
            hint="the gate's parts say which images it lost; more field data or more epochs may help",
        )
    for r in built.values():
        client.publish(r.folder)
    plan = plan | {
        "name": plan.get("name") or f"{card_name}-{version}",
        "release": {"name": card_name, "version": version},
    }
    rollout = client.create_rollout(plan)
    lineage = {
        "release": f"{card_name}/{version}",
        "mlflow_run": run_id,
        "dataset": str(dataset),
        "dataset_hash": version_manifest.dataset_hash,
        "parent_dataset_hash": (version_manifest.source.get("parent") or {}).get("dataset_hash"),
        "capture_set": version_manifest.source.get("capture_set"),
        "git": model.card["lineage"].get("git"),
        "rollout": rollout["name"],
    }
    if trigger:
        _audit(client, "retrain.closed", {"trigger_id": trigger["id"], "release": trigger["detail"].get("release"),
                                          "new_release": lineage})  # fmt: skip
    _audit(client, "loop.rollout", lineage, rollout=rollout["name"])
    summary |= {"rollout": rollout["name"], "lineage": lineage, "seconds": round(time.perf_counter() - started, 1)}
    return summary
