"""``factory build``: one bundle per target, or the best recipe of each target's search space."""

from __future__ import annotations

import click

from ..errors import ValidationError

__all__ = ["build_cmd", "build_table"]


def _drop(m) -> str:
    from ..tasks import quality_of

    p = m.validation["parity"]
    q = quality_of(p)
    if q.interval:  # a task with its own metric: the loss and its paired-bootstrap interval
        lo, hi = p[q.interval]
        return f"{p[q.loss]:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    check = next((c for c in m.validation["checks"] if c["check"] == "accuracy_drop"), None)
    if check and check.get("interval"):
        lo, hi = check["interval"]
        return f"{p['accuracy_drop_pt']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    return f"{p['accuracy_drop_pt']:+.2f}"


def _speedup(m) -> str:
    """The winner's speedup over the runtime's fp32 export of the unpruned model, in the search's own run."""
    rows = (m.lineage.get("search") or {}).get("candidates") or []
    win = next((r for r in rows if r.get("winner")), None)
    ref = next((r for r in rows if r.get("reference")), None)
    if win and ref and win.get("p50_ms") and ref.get("p50_ms"):
        return f"{ref['p50_ms'] / win['p50_ms']:.2f}x"
    return "-"


def build_table(results, *, latency: bool = True) -> str:
    """A Markdown table of built bundles: what each target costs in accuracy, latency and size.

    With ``latency=False`` the latency columns are left out (the main job shows one set of latency
    figures: its final interleaved benchmark); the speedup over the runtime's fp32 export is kept, with
    where it was measured.
    """
    from ..tasks import quality_of

    built = [r for r in results if hasattr(r, "manifest")]
    q = quality_of(built[0].manifest.validation["parity"] if built else {})
    head = (
        f"| target | backend | precision | pruning | {q.name} | {q.words.split()[-1]} pt [95% interval] | agreement | "
    )
    head += "p50 ms | p95 ms | latency from | " if latency else ""
    head += "speedup vs fp32 export (search run) | size MB | MACs (M) | verdict |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if not hasattr(r, "manifest"):  # a Failure: the target is in the table with where and why it failed
            cols = head.count("|") - 1
            rows.append(
                f"| {r.target} | {r.backend or '-'} | " + "- | " * (cols - 3) + r.text.replace("|", "\\|") + " |"
            )
            continue
        m = r.manifest
        p, rec = m.validation["parity"], m.recipe
        bad = [
            c["check"] + (" (inconclusive)" if c.get("verdict") == "inconclusive" else "")
            for c in m.validation["checks"]
            if not c["passed"]
        ]
        prune = (
            "none" if rec["pruning"]["method"] == "none" else f"{rec['pruning']['method']} {rec['pruning']['ratio']:g}"
        )
        quality = f"{p[q.value]:.2f}" if "%" in q.name else f"{p[q.value]:.4f}"
        agreement = f"{p['top1_agreement']:.4f}" if "top1_agreement" in p else "-"
        row = f"| {m.target} | {m.runtime['backend']} | {rec['precision']} | {prune} | {quality} | {_drop(m)} | "
        row += f"{agreement} | "
        if latency:
            source = "search run" if str(m.latency.get("source", "")).startswith("search") else "build probe"
            row += f"{m.latency['p50_ms']:.2f} | {m.latency['p95_ms']:.2f} | {source} | "
        row += f"{_speedup(m)} | {m.artifact['size_bytes'] / 1e6:.2f} | {m.artifact['macs'] / 1e6:.1f} | "
        unsure = m.validation.get("inconclusive")
        if m.passed and unsure:  # accepted by budgets.on_inconclusive: say so, never a bare "pass"
            verdict = f"pass ({', '.join(bad)}; on_inconclusive={unsure['rule']})"
        else:
            verdict = "pass" if not bad else "FAIL: " + ", ".join(bad)
        row += f"{verdict} |"
        rows.append(row)
    return "\n".join(rows)


def _write_reports(results, report_dir) -> None:
    if report_dir:
        from .._io import write_json
        from .build import Failure, build_report

        for r in results:
            row = r.to_dict() if isinstance(r, Failure) else build_report(r)
            write_json(f"{report_dir}/{r.target if isinstance(r, Failure) else r.manifest.target}.json", row)


@click.command("build")
@click.option(
    "--target", "targets", required=True, multiple=True, help="Target profile name (targets/NAME.yaml); repeatable."
)
@click.option(
    "--model",
    "model_dir",
    default="models/id-docs",
    show_default=True,
    type=click.Path(),
    help="Canonical model directory.",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(),
    help="Dataset for calibration/validation [default: the one in the model card].",
)
@click.option(
    "--key",
    "key_path",
    default="keys/signing.key",
    show_default=True,
    type=click.Path(),
    help="Ed25519 private key that signs the manifest.",
)
@click.option(
    "--out",
    "out_root",
    default="bundles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Bundles root: OUT/<model>/<version>/<target>/.",
)
@click.option(
    "--version",
    "version",
    default=None,
    help="Semantic version [default: the version these weights already have, else the next patch].",
)
@click.option("--precision", default=None, help="Override the recipe's precision for this build.")
@click.option("--prune", "prune", default=None, help="Override pruning, e.g. structured:0.5, unstructured:0.5 or none.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any profile key, e.g. --set runtime.threads=1.",
)
@click.option(
    "--targets-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder of target profiles [default: $FACTORY_TARGETS or ./targets].",
)
@click.option(
    "--cache-dir",
    default=".factory/cache",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Cache for pruned, fine-tuned models, exports and search candidates.",
)
@click.option("--no-track", is_flag=True, help="Do not log the build to MLflow (no registered model version).")
@click.option(
    "--report-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Also write REPORT_DIR/<target>.json with the headline figures.",
)
@click.option(
    "--search",
    "do_search",
    is_flag=True,
    help="Search the profile's recipe space and keep the fastest bundle within budget.",
)
@click.option(
    "--budget-minutes", default=None, type=float, help="With --search: stop building new candidates after this long."
)
@click.option(
    "--remeasure", is_flag=True, help="With --search: benchmark the candidates again even if nothing changed."
)
@click.option(
    "--search-dir",
    default="reports/search",
    show_default=True,
    type=click.Path(file_okay=False),
    help="With --search: where the Pareto report goes (<dir>/<target>/search.{md,json}, pareto.png).",
)
@click.option(
    "--search-config",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help=(
        "With --search: a YAML search section (objective, space, bench_seconds, budget_minutes) instead of the "
        "profile's."
    ),
)
@click.option(
    "--executor",
    default=None,
    type=click.Choice(["process", "local", "ray"]),
    help="Where each --target (or, with --search, each candidate) is built: process (default) runs it in a "
    "worker process, so a native crash fails that target, names the signal and stage, and the others go on; "
    "local runs it in this process; ray makes it a Ray task (a profile's device_class measures the search on a "
    "node with the resource device:<class>; --cache-dir must be a folder every node mounts) [default: ray when "
    "$FACTORY_RAY_ADDRESS is set, else $FACTORY_EXECUTOR, else process].",
)
@click.option(
    "--ray-address", default=None, help="With --executor ray: the cluster's head (host:port) [default: auto]."
)
def build_cmd(
    targets,
    model_dir,
    data,
    key_path,
    out_root,
    version,
    precision,
    prune,
    overrides,
    targets_dir,
    cache_dir,
    no_track,
    report_dir,
    do_search,
    budget_minutes,
    remeasure,
    search_dir,
    search_config,
    executor,
    ray_address,
) -> None:
    """Build a verified, signed bundle of the canonical model for each --target.

    \b
    Stages: prune -> export -> calibrate + quantize -> compile -> validate parity on the test
    split -> quick latency -> sign -> pack -> MLflow (a run under the training run, a registered
    model version, alias models:/<model>@<target>). The bundle lands in
    OUT/<model>/<version>/<target>/ with an archive OUT/<model>/<version>/<target>.tar.gz beside it:
      model file(s)   model.onnx | model.xml + model.bin | model.tflite
      manifest.json   runtime and version, input spec, preprocessing, labels, sha256 of every file,
                      recipe (with calibration hash), parity, latency with host CPU and flags,
                      lineage (training run, dataset hash, MLflow build run) and the reference profile
      manifest.sig    Ed25519 signature of manifest.json

    The profile's budgets decide pass or fail; a failing bundle is still written (with
    validation.passed: false) and the command exits 1. Prints a Markdown table.

    With --search, every candidate of the profile's search space (precision x pruning x threads...)
    is built (or taken from the cache), validated and benchmarked together; the fastest one within
    the budgets becomes the bundle, with the whole search in its manifest and a Pareto report.

    Example: factory build --target tflite --target cpu --precision int8-static
             factory build --target cpu --search --budget-minutes 10
    """
    from ..export.targets import load_target
    from .build import Failure, build, isolated, load_context

    if do_search:
        if precision or prune or overrides:
            raise click.UsageError(
                "--search explores the profile's search.space; do not combine it with --precision/--prune/--set"
            )
        results = _search(
            targets,
            model_dir,
            data,
            key_path,
            out_root,
            version,
            targets_dir,
            cache_dir,
            no_track,
            search_dir,
            budget_minutes,
            remeasure,
            search_config,
            executor,
            ray_address,
        )
        _write_reports(results, report_dir)
        if len(results) > 1 or isinstance(results[0], Failure):
            click.echo(build_table(results))
        finish(results)
        return
    extra = list(overrides)
    if precision:
        extra.append(f"recipe.precision={precision}")
    if prune:
        method, _, ratio = prune.partition(":")
        extra += [f"recipe.pruning.method={method}", f"recipe.pruning.ratio={ratio or 0}"]
    ctx = load_context(model_dir, data)
    profiles = {t: load_target(t, targets_dir, tuple(extra)) for t in targets}  # bad names and profiles stop here
    from .executor import get_executor

    pool = get_executor(executor, ray_address)  # after the inputs are checked: joining a cluster waits
    if pool.name != "local":
        from .cluster import build_on

        try:
            results = build_on(pool, ctx, profiles, model_dir=model_dir, key_path=key_path, data=data,
                               out_root=out_root, version=version, targets_dir=targets_dir, overrides=tuple(extra),
                               cache_dir=cache_dir, track=not no_track)  # fmt: skip
        finally:
            pool.close()
        _report_built(results, report_dir)
        return

    def one(t: str):
        return build(
            model_dir,
            t,
            key_path=key_path,
            data=data,
            out_root=out_root,
            version=version,
            targets_dir=targets_dir,
            overrides=tuple(extra),
            cache_dir=cache_dir,
            track=not no_track,
            context=ctx,
        )

    _report_built([isolated(t, profiles[t]["backend"], lambda t=t: one(t)) for t in targets], report_dir)


def _report_built(results, report_dir) -> None:
    """The table, where each bundle went, the reports; exit 1 when a target failed."""
    from .build import Failure

    _write_reports(results, report_dir)
    click.echo(build_table(results))
    for r in results:
        if not isinstance(r, Failure):
            tracked = f"  {r.tracking['alias']} v{r.tracking['registered_version']}" if r.tracking else ""
            click.echo(f"{r.folder}  ({r.archive.name}){tracked}")
    finish(results)


def finish(results) -> None:
    """Exit 1 when a target could not be built or its bundle failed its budgets (the table shows every target)."""
    from .build import Failure

    broken = [r for r in results if isinstance(r, Failure)]
    bad = [r.manifest.target for r in results if not isinstance(r, Failure) and not r.passed]
    parts = [f"{r.target} could not be built: {r.text}" for r in broken]
    if bad:
        parts.append(f"budget checks failed for {', '.join(bad)} (bundles written with validation.passed: false)")
    hints = [f"{r.target}: {r.hint}" for r in broken if r.hint]
    if parts:
        raise ValidationError(
            "; ".join(parts),
            hint="; ".join(hints) or "the table shows every target; see validation.checks in each manifest.json",
        )


def _search(
    targets,
    model_dir,
    data,
    key_path,
    out_root,
    version,
    targets_dir,
    cache_dir,
    no_track,
    search_dir,
    budget_minutes,
    remeasure,
    search_config,
    executor_name=None,
    ray_address=None,
):
    from ..export.targets import load_target
    from .build import isolated, load_context
    from .executor import get_executor
    from .search import load_search_config, search, search_markdown

    config = load_search_config(search_config) if search_config else None
    ctx = load_context(model_dir, data)
    profiles = {t: load_target(t, targets_dir) for t in targets}
    executor = get_executor(executor_name, ray_address)  # after the inputs are checked: joining a cluster waits
    results = []
    try:
        for t in targets:

            def one(t=t):
                result, summary = search(
                    model_dir,
                    t,
                    key_path=key_path,
                    data=data,
                    out_root=out_root,
                    targets_dir=targets_dir,
                    cache_dir=cache_dir,
                    report_dir=search_dir,
                    budget_minutes=budget_minutes,
                    remeasure=remeasure,
                    version=version,
                    track=not no_track,
                    search_config=config,
                    context=ctx,
                    executor=executor,
                )
                click.echo(search_markdown(summary))
                click.echo(
                    f"{result.folder}  ({result.archive.name}); report {summary['report']}/search.md, pareto.png"
                )
                return result

            results.append(isolated(t, profiles[t]["backend"], one))
    finally:
        executor.close()  # also when a search stops the command (a bad input): no worker is left behind
    return results


@click.command("parity")
@click.argument("bundle_path", type=click.Path(exists=True, file_okay=False))
@click.option("--platform", "platform", default="linux/arm64", show_default=True, help="The device architecture.")
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="An arm64 root with the device install (scripts/arm64-root.sh makes one; qemu runs it).",
)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The canonical model the bundle was built from.",
)
@click.option("--data", default=None, help="Dataset folder (default: the one in the model card).")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Private signing key: the bundle is signed again with the new section.",
)
@click.option(
    "--trusted-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Public key the bundle is signed with now (checked first, and again on the platform).",
)
def parity_cmd(bundle_path, platform, root, model_dir, data, key_path, trusted_key) -> None:
    """Check a bundle's parity on the device's architecture and record it in the manifest.

    Runs the bundle on the whole test split inside an arm64 root (qemu user-mode emulation on an x86
    build host; the root holds the device install the documentation's board page makes), then compares its
    outputs with the canonical model's (top-1 agreement, accuracy drop with its interval) and with the
    same bundle's outputs on this host. The result goes into the manifest as
    validation.platforms["linux/arm64"], and the bundle is signed again. No latency is recorded: under
    emulation it would time the emulator.

    \b
    Example:
      sudo scripts/arm64-root.sh .cache/arm64-root
      factory bundle parity bundles/id-docs/1.2.0/tflite --root .cache/arm64-root \\
          --model models/id-docs --key keys/signing.key --trusted-key keys/signing.pub
    """
    from ..bundle.signing import load_private_key
    from .platforms import ArmRoot, platform_parity

    section = platform_parity(
        bundle_path,
        ArmRoot(root, platform),
        model_dir=model_dir,
        data=data,
        public_key_path=trusted_key,
        private_key=load_private_key(key_path),
    )
    p = section["parity"]
    drop = section["accuracy_drop"]
    click.echo(
        f"{platform} ({section['environment']}, {section['host']['cpu']}): top-1 agreement {p['top1_agreement']:.4f} "
        f"with the canonical model on {p['n']} test images; drop {p['accuracy_drop_pt']:+.2f} pt"
        + (f" [{drop['interval_pt'][0]:+.2f}, {drop['interval_pt'][1]:+.2f}] ({drop['verdict']})" if drop else "")
        + f"; agreement with this host's run {section['vs_build_host']['top1_agreement']:.4f}"
    )
