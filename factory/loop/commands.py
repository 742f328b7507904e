"""``factory loop run|demo`` and ``factory data captures list|export`` / ``factory data version``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import progress
from ..registry.commands import _client, _config, _local, _registry, _token

__all__ = ["loop", "captures_group", "version_cmd"]


@click.group()
def loop() -> None:
    """The closed loop: field data -> annotation -> dataset version -> retrain -> gate -> staged rollout.

    \b
    1. a rollout plan with a capture block asks its devices for frames (opt-in, capped)
    2. factory data captures export   -> a CVAT 1.1 task with the model's outputs as pre-annotations
    3. correct it in CVAT; factory data version -> a new dataset version (parent + field slice)
    4. factory loop run               -> retrain, build, gate on old and field test data, publish, roll out
    factory loop demo runs all of it on a simulated fleet whose cameras drift.
    """


@loop.command("run")
@_registry
@_token
@_local
@_config
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False),
              help="The dataset version to retrain on (from `factory data version`).")  # fmt: skip
@click.option("--model", "canonical", required=True, type=click.Path(exists=True, file_okay=False),
              help="The current canonical model (warm start; its card's config is reused).")  # fmt: skip
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Signing key for the new bundles.")  # fmt: skip
@click.option("--plan", "plan_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Rollout plan YAML for the new release (its name and release are filled in).")  # fmt: skip
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Work folder (model, bundles).")
@click.option("--trigger", "trigger_id", type=int, default=None, help="Retraining trigger id [default: newest open].")
@click.option("--epochs", type=int, default=None, help="Fine-tune epochs [default: a third of the original].")
@click.option("--margin", type=float, default=1.0, show_default=True,
              help="Top-1 non-inferiority margin (points) on the old test split and on the field slice.")  # fmt: skip
@click.option("--trusted-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Verify bundles (the stable one downloaded from the registry) with this public key.")  # fmt: skip
def run_cmd(url, token, local, config_path, dataset, canonical, key_path, plan_path, out, trigger_id, epochs, margin,
            trusted_key) -> None:  # fmt: skip
    """Retrain on a dataset version, gate, publish and roll out; close the retraining trigger.

    Every step is an audit entry (loop.start, loop.retrain, loop.gate, loop.rollout, retrain.closed).
    Exit 1 when the gate fails (nothing is published).

    \b
    Example:
      factory loop run --dataset data/v2 --model models/id-docs --key keys/signing.key \\
          --plan configs/rollout.yaml --out work/loop --registry http://127.0.0.1:8700
    """
    import yaml

    from ..bundle.signing import load_public_key
    from .run import run_loop

    plan = yaml.safe_load(Path(plan_path).read_text())
    plan.pop("name", None)
    with _client(url, token, local, config_path) as client:
        summary = run_loop(client, dataset=dataset, canonical=canonical, key_path=key_path, plan=plan, out=out,
                           trigger_id=trigger_id, epochs=epochs, margin=margin,
                           public_key=load_public_key(trusted_key) if trusted_key else None)  # fmt: skip
    click.echo(json.dumps({k: summary[k] for k in ("version", "rollout", "lineage", "passed", "seconds")}, indent=2))


@loop.command("demo")
@click.option("--out", default="reports/loop-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--devices", default=40, show_default=True, help="Simulated devices.")
@click.option("--epochs", default=8, show_default=True, help="Epochs of the base model (the loop fine-tunes half).")
@click.option("--seed", default=0, show_default=True)
def demo_cmd(out, devices, epochs, seed) -> None:
    """The closed loop end to end on a simulated fleet whose cameras turn dark.

    Drift -> retraining trigger -> capture rollout -> simulated annotator (classes from the generator's
    ground truth; marked simulated everywhere) -> dataset version -> retrain -> gate -> staged
    rollout. Prints top-1 on the drifted slice and PSI per signal before and after, and the lineage
    chain from a telemetry window back to the commit. Writes OUT/summary.json.
    """
    from .demo import loop_demo

    s = loop_demo(out, devices=devices, epochs=epochs, seed=seed)
    a = s["accuracy"]
    click.echo(f"retraining trigger: {s['trigger']['reason']}")
    cap, ann = s["captures"], s["annotation"]
    click.echo(f"captures: {cap['uploaded']} uploaded ({cap['refused']} refused); annotation SIMULATED: "
               f"{ann['corrected']} of {ann['frames']} pre-annotations corrected")  # fmt: skip
    click.echo(f"top-1 on the drifted slice ({a['n_drifted']} field test frames): {a['drifted_slice_before']:.4f} -> "
               f"{a['drifted_slice_after']:.4f}; on the old test split ({a['n_old']}): {a['old_test_before']:.4f} -> "
               f"{a['old_test_after']:.4f}")  # fmt: skip
    signals = sorted(set(s["psi_before"]) | set(s["psi_after"]))
    for sig in signals:
        click.echo(f"  {sig:16s} before {s['psi_before'].get(sig, float('nan')):7.3f}   after "
                   f"{s['psi_after'].get(sig, float('nan')):7.3f}")  # fmt: skip
    click.echo(f"new release {s['loop']['version']}: rollout {s['loop']['rollout']} {s['rollout_status']}")
    click.echo("lineage chain:")
    for link in s["lineage_chain"]:
        click.echo("  <- " + ", ".join(f"{k}: {v}" for k, v in link.items()))
    click.echo(f"{s['seconds']:.0f} s; summary in {Path(out) / 'summary.json'}")


@click.group("captures")
def captures_group() -> None:
    """Field captures in the registry: list them, export them as a CVAT 1.1 task."""


@captures_group.command("list")
@_registry
@_token
@_local
@_config
@click.option("--rollout", default=None, help="Only this rollout's captures.")
def captures_list(url, token, local, config_path, rollout) -> None:
    """One line per capture: id, device, release, reason, the model's output."""
    with _client(url, token, local, config_path) as client:
        rows = client.call("GET", "/v1/captures", params={"rollout": rollout} if rollout else None)["captures"]
    for c in rows:
        click.echo(f"{c['id']:6d} {c['device_id']:20s} {c['release']:30s} {c['reason']:15s} {json.dumps(c['output'])}")
    click.echo(f"{len(rows)} capture(s)", err=True)


@captures_group.command("export")
@_registry
@_token
@_local
@_config
@click.option("--rollout", default=None, help="Only this rollout's captures.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="CVAT task folder to write.")
@click.option("--labels", default=None, help="Comma-separated class list [default: from the outputs].")
def captures_export(url, token, local, config_path, rollout, out, labels) -> None:
    """Write OUT/images, OUT/annotations.xml (CVAT for images 1.1, the model's outputs as pre-annotations)
    and OUT/captures.json (every capture's metadata and the capture set's id). Import the corrected task
    with `factory data version`."""
    from .captures import export_captures

    with _client(url, token, local, config_path) as client:
        s = export_captures(client, out, rollout=rollout, labels=labels.split(",") if labels else None)
    click.echo(f"wrote {out}: {len(s['captures'])} captures, capture set {s['capture_set']}")


@click.command("version")
@click.argument("parent", type=click.Path(exists=True))
@click.argument("task_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The new dataset version's folder.")
@click.option("--annotations", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The corrected CVAT XML [default: TASK_DIR/annotations.xml].")  # fmt: skip
def version_cmd(parent, task_dir, out, annotations) -> None:
    """A new dataset version: PARENT's files (same splits) plus the annotated captures of TASK_DIR as a
    field slice with its own test part; the manifest names the parent and the capture set.

    Example: factory data version data/synth work/captures --out data/synth-v2
    """
    from .versions import new_version

    with progress.bar("versioning", 0):
        m = new_version(parent, task_dir, out, annotations=annotations)
    field = m.source["field_slice"]
    click.echo(
        f"wrote {out}: {len(m.files)} images ({m.source['captures']} from capture set {m.source['capture_set']}: "
        f"test {len(m.subset('test', slice=field))}); parent {m.source['parent']['dataset_hash'][:12]}, "
        f"hash {m.dataset_hash[:12]}"
    )
