"""``factory run``: the whole loop on embedded defaults, driven by ``params.yaml``.

The same stages, with the same parameters, are the stages of ``dvc.yaml``; ``factory run`` runs them
in one process for people without DVC, and skips the synthetic dataset when it is already there
with the same parameters.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import progress
from ..config import Key, load_config
from ..data.manifest import MANIFEST_NAME
from ..errors import GateFailure, InputError, ValidationError

__all__ = ["PIPELINE_SCHEMA", "run"]

PIPELINE_SCHEMA = {
    "synth": {
        "out": Key(str, "data/synth"),
        "seed": Key(int, 0),
        "per_class": Key(int, 300),
        "size": Key(str, "256x192", "image WIDTHxHEIGHT"),
        "split": Key(
            str, "0.6,0.2,0.2", "train,val,test fractions (the test split decides what accuracy margins resolve)"
        ),
    },
    "profile": {
        "out": Key(str, "reports/data"),
        "samples_per_class": Key(int, 6),
    },
    "train": {
        "config": Key(str, "configs/train.yaml"),
        "out": Key(str, "models/id-docs", "canonical model directory"),
        "seed": Key(int, 0),
        "epochs": Key(int, 12),
    },
    "build": {
        "targets": Key(list, ["cpu", "openvino", "tflite"], "target profiles in targets/"),
        "key": Key(str, "keys/signing.key", "signing key; created on first run if missing"),
        "out": Key(str, "bundles"),
        "report_dir": Key(str, "reports/build"),
        "search_config": Key(
            str,
            "configs/search-quick.yaml",
            "search each target within this space; null: plain builds of the profiles",
            nullable=True,
        ),
    },
    "bench": {
        "out": Key(str, "reports/bench"),
        "seconds": Key(float, 15.0, "interleaved measuring time for PyTorch eager + every bundle"),
        "baseline": Key(str, "reports/baseline", "baseline folder; recorded on the first run"),
        "policy": Key(str, "configs/gates.yaml"),
        "remeasure": Key(bool, True, "gate by re-running the baseline beside the candidate"),
        "model": Key(str, "id-docs", "bundles/<model> folder the dvc bench stage measures"),
        "verdict": Key(str, "reports/gate.json", "where the dvc gate stage writes its verdict"),
    },
    "fleet": {
        "enabled": Key(bool, True, "publish to a local registry and run the simulated staged rollouts"),
        "out": Key(
            str, "reports/fleet-demo", "local registry, re-released bundles and the demo summary (recreated each run)"
        ),
        "devices": Key(int, 200),
        "fault": Key(str, "latency", "what goes wrong with the bad release", choices=["latency", "drift"]),
        "window_seconds": Key(int, 2, "telemetry window of the demo (simulated time)"),
    },
}


def _synth_is_current(out: Path, p: dict) -> bool:
    from ..data.manifest import load_manifest, parse_fractions
    from ..data.synth import parse_size
    from ..errors import DataError

    if not (out / MANIFEST_NAME).is_file():
        return False
    try:
        manifest = load_manifest(out)
    except DataError:
        return False
    wanted = {"kind": "synth", "seed": p["seed"], "per_class": p["per_class"], "size": list(parse_size(p["size"]))}
    return manifest.source == wanted and manifest.split == parse_fractions(p["split"])


class _Clock:
    """Seconds per stage of the main job, for its summary."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def stage(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            t0 = time.perf_counter()
            yield
            self.timings[name] = time.perf_counter() - t0

        return timed()


def _dataset(p: dict, fresh: bool):
    from ..data.documents import document_types
    from ..data.manifest import load_manifest, parse_fractions
    from ..data.synth import parse_size, synthesize

    s, out = p["synth"], Path(p["synth"]["out"])
    if not fresh and _synth_is_current(out, s):
        progress.info(f"[1/6] dataset {out} is current (seed {s['seed']}, {s['per_class']} per class); reusing it")
        return load_manifest(out)
    progress.info(f"[1/6] synthesizing {out}")
    with progress.bar("synthesizing", s["per_class"] * len(document_types())) as tick:
        return synthesize(
            out,
            seed=s["seed"],
            per_class=s["per_class"],
            size=parse_size(s["size"]),
            fractions=parse_fractions(s["split"]),
            progress=tick,
        )


def _profile(p: dict, manifest) -> dict:
    from ..data.profile import write_report

    progress.info(f"[2/6] profiling -> {p['profile']['out']}")
    with progress.bar("profiling", len(manifest.files)) as tick:
        return write_report(
            manifest, p["profile"]["out"], samples_per_class=p["profile"]["samples_per_class"], progress=tick
        )


def _train(p: dict):
    from ..train.loop import train
    from ..train.schema import TRAIN_SCHEMA

    t = p["train"]
    progress.info(f"[3/6] training ({t['config']})")
    cfg = load_config(
        t["config"],
        TRAIN_SCHEMA,
        [
            f"data.manifest={Path(p['synth']['out']) / MANIFEST_NAME}",
            f"output.dir={t['out']}",
            f"train.seed={t['seed']}",
            f"train.epochs={t['epochs']}",
        ],
    )
    model = train(cfg, config_path=t["config"])
    if model is None:
        raise InputError(
            "this node did not hold rank 0 of the training: the model was written on another node",
            hint="run `factory run` on one machine (distributed.nodes: 1), or `factory train` on each node",
        )
    return model


def _signing_key(b: dict) -> Path:
    key = Path(b["key"])
    if not key.is_file():
        from ..bundle.signing import generate_keys

        generate_keys(key.with_suffix(""))
        progress.info(f"created signing key {key} and {key.with_suffix('.pub')} (keep the .key secret)")
    return key


def _build(p: dict, model, key: Path) -> tuple[list, str]:
    """Every target: a search of the reduced space (or a plain build of the profile); one published bundle each.
    A target that fails is recorded with its stage and the others go on."""
    from .._io import atomic_write, write_json
    from ..export.targets import load_target
    from .build import Failure, build, build_report, isolated, load_context
    from .commands import build_table
    from .search import load_search_config, search

    b, data = p["build"], p["synth"]["out"]
    progress.info(f"[4/6] building bundles for {', '.join(b['targets'])}")
    ctx = load_context(model.path, data)
    config = load_search_config(b["search_config"]) if b["search_config"] else None
    backends = {t: load_target(t)["backend"] for t in b["targets"]}

    def one(target: str):
        if config is None:
            return build(model.path, target, key_path=key, data=data, out_root=b["out"], context=ctx)
        result, summary = search(
            model.path, target, key_path=key, data=data, out_root=b["out"], search_config=config, context=ctx
        )
        progress.info(f"  {target}: {summary['verdict']}")
        return result

    results = []
    for target in b["targets"]:
        result = isolated(target, backends[target], lambda t=target: one(t))
        results.append(result)
        write_json(
            Path(b["report_dir"]) / f"{target}.json",
            result.to_dict() if isinstance(result, Failure) else build_report(result),
        )
    atomic_write(Path(b["report_dir"]) / "summary.md", build_table(results) + "\n")
    table = build_table(results, latency=False)  # the summary's latency figures come from the final benchmark
    return results, table


def _bench_and_gate(p: dict, model, results) -> tuple[dict, dict]:
    from ..bench.gate import run_gate
    from ..bench.report import write_report
    from ..bench.run import run_bench

    bp = p["bench"]
    progress.info(
        f"[5/6] benchmarking PyTorch eager and the bundles, interleaved for {bp['seconds']:g} s; then the gate"
    )
    report = run_bench(
        [str(model.path)] + [str(r.folder) for r in results], data=p["synth"]["out"], seconds=bp["seconds"]
    )
    write_report(report, bp["out"])
    verdict = run_gate(report, bp["baseline"], bp["policy"], remeasure_both=bp["remeasure"], record_missing=True)
    return report, verdict


def _fleet(p: dict, results, key: Path) -> dict:
    from .fleet_demo import fleet_demo

    fp = p["fleet"]
    progress.info(f"[6/6] fleet: local registry in {fp['out']}, staged rollouts to {fp['devices']} simulated devices")
    return fleet_demo(
        [r.folder for r in results],
        key_path=key,
        dataset=p["synth"]["out"],
        out=Path(fp["out"]),
        devices=fp["devices"],
        fault=fp["fault"],
        window_seconds=fp["window_seconds"],
    )


def _summary(
    p: dict,
    manifest,
    profile: dict,
    model,
    results,
    table: str,
    report: dict,
    verdict: dict,
    demo: dict | None,
    timings: dict,
    key: Path,
) -> str:
    from ..bench.report import markdown

    card, b, bp = model.card, p["build"], p["bench"]
    test = card["metrics"]["test"]
    lines = [
        "",
        "main job finished",
        f"  dataset     {p['synth']['out']}  {len(manifest.files)} images, {len(manifest.classes)} classes, hash "
        f"{manifest.dataset_hash[:16]}",
        f"  profile     {p['profile']['out']}/profile.json  (imbalance {profile['imbalance_ratio']}, duplicates "
        f"{profile['duplicates']['extra_copies']})",
        f"  model       {model.path}  {card['architecture']}, {card['complexity']['macs'] / 1e6:.1f} M MACs, "
        f"test top-1 {test['top1']:.4f} on {test['n']} images, ONNX max abs diff "
        f"{card['onnx_parity']['max_abs_diff']:.1e}",
        f"  mlflow      run {card['lineage']['mlflow']['run_id']}  (mlflow ui --backend-store-uri "
        f"{card['lineage']['mlflow']['tracking_uri']})",
        "  registered  "
        + ", ".join(f"{r.tracking['alias']} (v{r.tracking['registered_version']})" for r in results if r.tracking),
        f"  bundles     {b['out']}/{card['name']}/{results[0].manifest.version}/  (verify: factory bundle verify "
        f"BUNDLE --pubkey {key.with_suffix('.pub')})",
        "  time        " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()),
        f"  reports     {b['report_dir']}/summary.md (build checks), {bp['out']}/report.md (+ latency.png, "
        "accuracy_vs_latency.png)",
        "",
        "builds (budgets from targets/*.yaml; accuracy on the test split against the canonical model; the speedup is "
        "the winner's over the runtime's fp32 export in the search's own interleaved run; latency: see below):",
        table,
        "",
        "benchmark (the final interleaved run, one process per artifact, the others stopped while one is timed; "
        "the headline latency of each bundle; speedup over PyTorch eager):",
        markdown(report),
        "",
    ]
    if demo:
        lines += ["", f"fleet ({p['fleet']['devices']} simulated devices, local registry {demo['registry']}):"]
        for label, r in demo["rollouts"].items():
            lines.append(
                f"  {label:5s} release {demo['releases'][label]}: rollout {r['rollout']} ended {r['status']} "
                f"at stage {r['stage'] + 1} after {r['windows']} telemetry windows"
            )
        lines.append("  audit log:")
        for a in demo["audit"]:
            if a["action"].startswith(("rollout.", "retrain.")):
                why = a["detail"].get("reason", "")
                lines.append(f"    {a['ts']}  {a['actor']:10s} {a['action']:17s} {a['rollout'] or '':22s} {why}")
        lines.append(
            f"  look: factory registry serve --config {demo['registry']}/registry.yaml, then http://127.0.0.1:8700/status"
        )
    if verdict.get("recorded_baseline"):
        lines.append(f"gate: no baseline yet; recorded this run at {bp['baseline']} (the next run is gated against it)")
    else:
        lines += ["gate vs " + bp["baseline"] + ":"] + ["  " + c["text"] for c in verdict["checks"]]
    return "\n".join(lines)


@click.command("run")
@click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Pipeline parameters, one section per stage (the same file dvc.yaml reads).",
)
@click.option("--fresh", is_flag=True, help="Regenerate the synthetic dataset even if it is current.")
def run(params_path: str, fresh: bool) -> None:
    """Run the main job end to end: data, profile, train, a signed bundle per target, bench and gate.

    Everything stays local: images under data/, reports under reports/, the model under models/,
    bundles under bundles/, the signing key under keys/ (created if missing), MLflow runs in
    ./mlruns (SQLite). Prints a summary with where to look.
    """
    p = load_config(params_path, PIPELINE_SCHEMA)
    from ..export.targets import load_target

    for target in p["build"]["targets"]:  # an unknown target fails now, not after the training
        load_target(target)
    clock = _Clock()
    with clock.stage("data"):
        manifest = _dataset(p, fresh)
    with clock.stage("profile"):
        profile = _profile(p, manifest)
    with clock.stage("train"):
        model = _train(p)
    with clock.stage("build"):
        key = _signing_key(p["build"])
        results, table = _build(p, model, key)
    built = [r for r in results if hasattr(r, "manifest")]  # a target that failed is in the table, not benchmarked
    if not built:
        click.echo(table)
        raise ValidationError("no target could be built (see the table above and " + p["build"]["report_dir"] + "/)")
    with clock.stage("bench+gate"):
        report, verdict = _bench_and_gate(p, model, built)
    demo = None
    if p["fleet"]["enabled"]:
        with clock.stage("fleet"):
            demo = _fleet(p, built, key)
    click.echo(_summary(p, manifest, profile, model, built, table, report, verdict, demo, clock.timings, key))
    from .commands import finish

    finish(results)  # exit 1 when a target could not be built or failed its budgets
    if not verdict["passed"]:
        raise GateFailure(f"the gate found a regression against {p['bench']['baseline']} (see the lines above)")
