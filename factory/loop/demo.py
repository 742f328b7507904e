"""``factory loop demo``: the whole closed loop on a simulated fleet whose cameras drift.

1. A base dataset, a model trained on it, its cpu bundle published to a local registry and rolled out
   to the whole fleet (stable).
2. Every simulated camera turns dark (a darkness factor on its frames, which come from a pool of field
   photographs the model never saw): telemetry shows brightness and confidence drift, and the monitor
   raises a retraining trigger after three drifting windows.
3. A capture rollout of the same release asks its devices for frames (low confidence, or at random;
   capped per device and day); the devices upload them with the model's own output.
4. The captures are exported as a CVAT task with pre-annotations; a **simulated annotator** sets each
   frame's class from the generator's ground truth (marked ``simulated`` in every output); the corrected
   task becomes a new dataset version (parent, capture set, a field slice with its own test part).
5. ``factory loop run``: warm-start retraining, build, the gate on the old test split and on the field
   slice, publish, a staged rollout; the fleet (still dark) takes the new release through its stages.

It prints top-1 on the drifted slice before and after, PSI per signal before and after, and the
lineage chain from one telemetry window of the new release back to the commit.
"""

from __future__ import annotations

import base64
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from .. import progress
from .._io import read_json, write_json

__all__ = ["loop_demo"]

CLASSES = ["id-card", "passport", "driving-licence", "visa"]
DARKNESS = 0.35
# the demo's test splits hold a few hundred images: they resolve a 3-point margin, not a 1-point one
BUDGETS = ("budgets.max_accuracy_drop_pt=3.0", "budgets.min_top1_agreement=0.9")
HEALTH = {"min_inferences": 50, "windows_to_halt": 2, "max_psi": 0.25, "max_js": 0.1}


def _train_base(data: Path, out: Path, epochs: int, seed: int):
    import yaml

    from ..config import load_config
    from ..train.loop import train
    from ..train.schema import TRAIN_SCHEMA

    cfg = {
        "data": {"manifest": str(data / "dataset.json")},
        "model": {"name": "loop-demo", "architecture": "mobilenet_v3_small", "image_size": [64, 64]},
        "train": {"epochs": epochs, "seed": seed, "batch_size": 32},
        "output": {"dir": str(out)},
        "tracking": {"experiment": "loop-demo"},
    }
    path = out.parent / "train.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return train(load_config(str(path), TRAIN_SCHEMA), config_path=str(path))


def _pool(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    from ..data.manifest import load_manifest

    m = load_manifest(folder)
    recs = sorted(m.files, key=lambda r: r.sha256)
    return [cv2.imread(str(m.resolve(r)), cv2.IMREAD_COLOR) for r in recs], [r.label for r in recs]


def _dark(img: np.ndarray) -> np.ndarray:
    return np.clip(img.astype(np.float32) * DARKNESS, 0, 255).astype(np.uint8)


def _capture_round(client, fleet, pool: list[np.ndarray], truth: list[str], policy: dict, seed: int) -> dict:
    """Each simulated device that the capture rollout covers looks at its own share of the (dark) field
    frames and uploads those the policy keeps, with the model's output; the registry checks every one."""
    from ..device.capture import capture_reason

    rng = np.random.default_rng(seed)
    share = max(1, len(pool) // len(fleet.devices))
    counts = {"uploaded": 0, "refused": 0, "not_kept": 0}
    for i, d in enumerate(fleet.devices):
        a, _ = client.assignment(fleet.model, d.device_id, d.target, d.tags)
        if not a.get("capture"):
            continue  # consent: only devices a capture plan covers
        b = fleet.behaviours[d.release]
        outcomes, _stats = b.outputs["dark"]
        kept = 0
        for j in range(i * share, min(len(pool), (i + 1) * share)):
            if kept >= policy["max_per_device_per_day"]:
                break  # the device keeps the plan's daily cap itself, as the agent's Capturer does
            o = outcomes[j]
            reason = capture_reason(policy, o["confidence"], None, float(rng.random()))
            if reason is None:
                counts["not_kept"] += 1
                continue
            ok, buf = cv2.imencode(".jpg", _dark(pool[j]), [cv2.IMWRITE_JPEG_QUALITY, 92])
            rel = b.manifest
            body = {
                "idempotency_key": f"{d.device_id}:capture:{j}",
                "device_id": d.device_id,
                "rollout": a["rollout"],
                "release": {"name": rel.name, "version": rel.version, "target": rel.target},
                "reason": reason,
                "output": {"label": rel.labels[o["cls"]], "confidence": round(o["confidence"], 4)},
                "image": base64.b64encode(buf.tobytes()).decode(),
                "simulated": True,
                "source": {"pool_index": j},
            }
            r = client.request("POST", "/v1/captures", json=body, ok=(200, 201, 403, 413, 422, 429))
            counts["uploaded" if r.status_code in (200, 201) else "refused"] += 1
            kept += 1
    return counts


def _annotate(task_dir: Path, truth: list[str]) -> dict:
    """The simulated annotator: each captured frame's class from the generator's ground truth."""
    meta = read_json(task_dir / "captures.json")
    by_name = {f"images/capture-{c['id']:06d}.jpg": truth[c["meta"]["source"]["pool_index"]] for c in meta["captures"]}
    tree = ET.parse(task_dir / "annotations.xml")
    changed = 0
    for el in tree.getroot().findall("image"):
        tag = el.find("tag")
        label = by_name[el.get("name")]
        if tag is None:
            tag = ET.SubElement(el, "tag", label=label, source="simulated-annotator")
            changed += 1
        elif tag.get("label") != label:
            tag.set("label", label)
            tag.set("source", "simulated-annotator")
            changed += 1
    tree.write(task_dir / "annotations.xml", encoding="utf-8", xml_declaration=True)
    meta["simulated_annotation"] = True
    meta["annotator"] = "simulated: classes from the synthetic generator's ground truth"
    write_json(task_dir / "captures.json", meta)
    return {"frames": len(by_name), "corrected": changed}


def _psi(report: dict, release: str) -> dict:
    """PSI (and JS) per signal of the newest window of ``release`` that has drift figures: as the stable
    release, else in a rollout that took it out."""
    windows = [w for s in report["stable"] if s["release"] == release for w in s["windows"]]
    if not any(w.get("drift") for w in windows):
        windows = [w for r in report["rollouts"] for t in r.get("targets", {}).values() if t.get("release") == release
                   for w in t.get("windows", [])]  # fmt: skip
    judged = [w for w in windows if w.get("drift")]
    return {k: round(v, 3) for k, v in (judged[-1]["drift"] if judged else {}).items() if v is not None}


def loop_demo(out: str | Path, *, devices: int = 40, epochs: int = 8, seed: int = 0, margin: float = 3.0) -> dict:
    """Run the closed loop end to end (see the module docstring); returns and writes its summary."""
    from ..bundle.signing import generate_keys, load_public_key
    from ..data.synth import synthesize
    from ..device.simulate import Fleet, Knobs
    from ..export.targets import load_target
    from ..pipeline.build import build
    from ..registry.local import local_client
    from ..registry.settings import default_settings
    from .captures import export_captures
    from .run import open_triggers, run_loop
    from .versions import new_version

    load_target("cpu", None, BUDGETS)  # the profile the demo builds, found before anything is trained
    started = time.perf_counter()
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    progress.info("loop demo: base data, field photographs (unseen), and the base model")
    synthesize(out / "data/base", seed=seed, per_class=200, size=(96, 72), classes=CLASSES,
               fractions={"train": 0.5, "val": 0.15, "test": 0.35})  # fmt: skip
    synthesize(out / "data/field-pool", seed=seed + 1000, per_class=80, size=(96, 72), classes=CLASSES)
    base = _train_base(out / "data/base", out / "models/base", epochs, seed)
    key, pub = generate_keys(out / "keys/signing")
    fleet_key, _ = generate_keys(out / "keys/fleet")
    first = build(
        base.path, "cpu", key_path=key, data=str(out / "data/base"), out_root=out / "bundles", version="0.1.0",
        overrides=BUDGETS, track=False,
    )  # fmt: skip
    settings = default_settings(
        database=f"sqlite:///{(out / 'registry.db').resolve()}", storage=str((out / "blobs").resolve()),
        trusted_keys=[str(pub.resolve())], fleet_key=str(fleet_key.resolve()), public_url="http://local",
    )  # fmt: skip
    settings["telemetry"] = settings["telemetry"] | {"window_seconds": 2, "evaluate_seconds": 0.0, "retrain_windows": 3}
    pool, truth = _pool(out / "data/field-pool")
    model = base.card["name"]
    summary: dict = {"simulated": {"annotator": True, "fleet": True, "darkness": DARKNESS}, "devices": devices}
    with local_client(settings) as client:
        client.publish(first.folder)
        client.create_rollout({"name": f"{model}-0.1.0", "release": {"name": model, "version": "0.1.0"},
                               "stages": [{"percent": 100}]})  # fmt: skip
        client.act(f"{model}-0.1.0", "advance", "first release: straight to stable")
        fleet = Fleet(client, model=model, devices=devices, targets=["cpu"], bundle_key=load_public_key(pub),
                      knobs=Knobs(dark_share=1.0, darkness=DARKNESS, latency_model_ms=0.5), images=pool,
                      cache=out / "device-cache", window_seconds=2, seed=seed)  # fmt: skip
        progress.info("loop demo: the cameras turn dark; waiting for the monitor's retraining trigger")
        for _ in range(8):
            fleet.simulate(1, inferences=40)
            if open_triggers(client, model):
                break
        trigger = (open_triggers(client, model) or [None])[0]
        if trigger is None:
            raise RuntimeError("the monitor raised no retraining trigger: the drift was not detected")
        summary["psi_before"] = _psi(client.call("GET", "/v1/health"), f"{model}/0.1.0/cpu")
        summary["trigger"] = {"id": trigger["id"], "reason": trigger["detail"]["reason"]}
        policy = {"when": {"max_confidence": 0.9, "random_rate": 0.5}, "max_per_device_per_day": 8,
                  "max_bytes": 60_000, "retention_days": 30}  # fmt: skip
        capture = f"{model}-0.1.0-capture"
        client.create_rollout({"name": capture, "release": {"name": model, "version": "0.1.0"},
                               "stages": [{"percent": 100}], "capture": policy,
                               "health": {"auto_advance": False, "auto_rollback": False}})  # fmt: skip
        fleet.simulate(1, inferences=20)  # devices poll: the capture plan reaches them
        summary["captures"] = _capture_round(client, fleet, pool, truth, policy, seed)
        exported = export_captures(client, out / "captures", rollout=capture, labels=base.labels)
        summary["annotation"] = _annotate(out / "captures", truth)
        client.act(capture, "advance", "captured enough field frames")
        version = new_version(out / "data/base", out / "captures", out / "data/v2")
        field_test = version.subset("test", slice=version.source["field_slice"])
        summary["dataset"] = {"version": str(out / "data/v2"), "hash": version.dataset_hash,
                              "parent": version.source["parent"]["dataset_hash"],
                              "capture_set": exported["capture_set"], "field_test_images": len(field_test)}  # fmt: skip
        enough = max(2, devices // 10)  # devices reporting before a stage may advance (a quarter of the fleet at 25%)
        stages = [{"percent": 25, "min_devices_reporting": enough}, {"percent": 100, "min_devices_reporting": enough}]
        loop = run_loop(client, dataset=out / "data/v2", canonical=base.path, key_path=key,
                        plan={"stages": stages, "health": HEALTH}, out=out / "loop", trigger_id=trigger["id"],
                        margin=margin, public_key=load_public_key(pub), epochs=max(3, epochs // 2),
                        overrides=BUDGETS)  # fmt: skip
        summary["loop"] = {k: loop[k] for k in ("version", "gates", "rollout", "lineage", "seconds")}
        progress.info(f"loop demo: rolling out {loop['version']} to the (still dark) fleet")
        for _ in range(10):
            fleet.simulate(1, inferences=40)
            if client.rollout(loop["rollout"])["status"] in ("completed", "rolled_back"):
                break
        summary["rollout_status"] = client.rollout(loop["rollout"])["status"]
        for _ in range(2):  # windows of the new stable release, for its drift figures
            fleet.simulate(1, inferences=40)
        summary["psi_after"] = _psi(client.call("GET", "/v1/health"), f"{model}/{loop['version']}/cpu")
        summary["lineage_chain"] = lineage_chain(client, f"{model}/{loop['version']}/cpu", settings)
        summary["audit"] = [a for a in client.audit(limit=500) if a["action"].startswith(("loop.", "retrain."))]
    field = next(p for n, p in summary["loop"]["gates"]["cpu"]["parts"].items() if n.startswith("field"))
    old = summary["loop"]["gates"]["cpu"]["parts"]["old test split"]
    summary["accuracy"] = {
        "drifted_slice_before": field["stable_top1"],
        "drifted_slice_after": field["candidate_top1"],
        "old_test_before": old["stable_top1"],
        "old_test_after": old["candidate_top1"],
        "n_drifted": field["n"],
        "n_old": old["n"],
    }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "summary.json", summary)
    return summary


def lineage_chain(client, release_key: str, settings: dict) -> list[dict]:
    """From one telemetry window of ``release_key`` back through the release, its training run, its
    dataset version and that version's parent, the capture set (and its rollout), to the commit."""
    import json

    import sqlalchemy as sa

    from ..data.manifest import load_manifest
    from ..registry import db

    engine = db.engine_for(settings["database"])
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(db.telemetry).where(db.telemetry.c.release_key == release_key).order_by(db.telemetry.c.id.desc())
        ).first()
    name, version, target = release_key.split("/")
    manifest = client.call("GET", f"/v1/releases/{name}/{version}/{target}")["manifest"]
    lineage = manifest["lineage"]
    card = read_json(Path(lineage["canonical"]["path"]) / "model_card.json")
    dataset = load_manifest(card["lineage"]["dataset_manifest"])
    chain = []
    if row is not None:
        s = json.loads(row.summary)
        chain.append({"step": "telemetry window", "device": row.device_id, "start": row.window_start,
                      "inferences": s["count"]})  # fmt: skip
    chain += [
        {"step": "release", "key": release_key, "canonical_weights": lineage["canonical"]["weights_sha256"][:16]},
        {"step": "training run", "mlflow_run": (card["lineage"].get("mlflow") or {}).get("run_id"),
         "config_hash": card["lineage"].get("config_hash"), "warm_start": card["lineage"].get("config_values", {})
         .get("model", {}).get("pretrained")},
        {"step": "dataset version", "name": dataset.name, "hash": dataset.dataset_hash},
    ]  # fmt: skip
    src = dataset.source
    if src.get("parent"):
        chain.append({"step": "parent dataset", "name": src["parent"]["name"], "hash": src["parent"]["dataset_hash"]})
        chain.append({"step": "capture set", "id": src.get("capture_set"), "rollout": src.get("rollout"),
                      "frames": src.get("captures"), "simulated": src.get("simulated_annotation")})  # fmt: skip
    chain.append({"step": "commit", "git": card["lineage"].get("git")})
    return chain
