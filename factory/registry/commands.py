"""``factory registry ...``, ``factory release ...`` and ``factory rollout ...``."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["registry", "release", "rollout"]

_config = click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Registry settings YAML [default: configs/registry.yaml if present].",
)
_registry = click.option(
    "--registry", "url", default=None, help="Registry URL [default: $FACTORY_REGISTRY_URL or http://127.0.0.1:8700]."
)
_token = click.option("--token", default=None, help="Bearer token [default: $FACTORY_REGISTRY_TOKEN].")
_local = click.option(
    "--local", is_flag=True, help="No server: run the registry in-process on the local database and blob store."
)


def _settings(config_path: str | None) -> dict:
    from .settings import load_settings

    if config_path is None and Path("configs/registry.yaml").is_file():
        config_path = "configs/registry.yaml"
    return load_settings(config_path)


def _client(url, token, local, config_path):
    from ..device.client import RegistryClient
    from .local import local_client

    return local_client(_settings(config_path)) if local else RegistryClient(url, token)


@click.group()
def registry() -> None:
    """Run the bundle registry service and manage its tokens."""


@registry.command("serve")
@_config
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True)
@click.option(
    "--workers", default=1, show_default=True, help="Worker processes (replicas share the database and blob store)."
)
def serve_cmd(config_path, host, port, workers) -> None:
    """Serve the registry over HTTP (OpenAPI at /docs and /openapi.json).

    Embedded defaults: SQLite at registry/registry.db and bundles under registry/blobs. Point
    `database` at PostgreSQL and `storage` at an object store (s3://...) to run several replicas.
    """
    import os

    import uvicorn

    settings = _settings(config_path)
    os.environ["FACTORY_REGISTRY_SETTINGS"] = json.dumps(settings)
    click.echo(
        f"registry on http://{host}:{port}  (database {settings['database']}, storage {settings['storage']})", err=True
    )
    uvicorn.run(
        "factory.registry.serve:app", host=host, port=port, workers=workers, log_level="warning", access_log=False
    )


@registry.group("token")
def token_group() -> None:
    """Create or revoke API tokens (stored hashed; shown once)."""


@token_group.command("create")
@_config
@click.option("--name", required=True, help="Who the token is for, e.g. ci or device-fleet-eu.")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["admin", "viewer", "enroll", "device"]),
    help="admin: publish, rollouts, everything; viewer: read health, metrics, rollouts; enroll: enrol new devices "
    "(each gets its own token); device: one device, bound to --device-id.",
)
@click.option("--device-id", default=None, help="With --role device: the one device this token speaks for.")
@click.option(
    "--max-devices",
    default=None,
    type=int,
    help="With --role enroll: how many devices it may enrol, then it enrols no more [default: unlimited]. "
    "A leaked enrolment token can then mint only that many device identities.",
)
def token_create(config_path, name, role, device_id, max_devices) -> None:
    """Create a token and print it (only now: the registry keeps its hash)."""
    from . import db
    from .auth import create_token

    engine = db.engine_for(_settings(config_path)["database"])
    with engine.begin() as conn:
        click.echo(create_token(conn, name, role, device_id, max_devices))


@token_group.command("revoke")
@_config
@click.option("--name", required=True)
def token_revoke(config_path, name) -> None:
    """Revoke every token with this name."""
    from . import db
    from .auth import revoke_token

    with db.engine_for(_settings(config_path)["database"]).begin() as conn:
        click.echo(f"revoked {revoke_token(conn, name)} token(s)")


@registry.command("forget-device")
@_config
@click.argument("device_id")
@click.option("--revoke", is_flag=True, help="Also delete its registration and revoke its tokens (it must re-enrol).")
def forget_device_cmd(config_path, device_id, revoke) -> None:
    """Delete DEVICE_ID's field captures (rows and images) and telemetry, on request (audited as device.forget).

    Works on the registry's own database and blob store, like `token`; the rolled-up history keeps only
    per-release figures, which name no device. Over HTTP: DELETE /v1/devices/DEVICE_ID/data (admin).
    """
    import re

    from ..errors import InputError
    from . import db
    from .auth import DEVICE_ID
    from .privacy import forget_device
    from .storage import BlobStore

    if not re.fullmatch(DEVICE_ID, device_id):
        raise InputError(f"device id {device_id!r} must be 1-200 characters of [A-Za-z0-9._:-]")
    settings = _settings(config_path)
    out = forget_device(db.engine_for(settings["database"]), BlobStore(settings["storage"]), device_id, "cli", revoke)
    extra = f", {out['tokens_revoked']} token(s) revoked, registration deleted" if revoke else ""
    click.echo(
        f"forgot {device_id}: {out['captures']} capture(s), {out['images']} image(s), "
        f"{out['telemetry']} telemetry summary(ies){extra}"
    )


@click.group()
def release() -> None:
    """Publish and list releases (signed bundles) in the registry."""


@release.command("publish")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True))
@_registry
@_token
@_local
@_config
@click.option("--allow-failed", is_flag=True, help="Publish even if the bundle failed its own budgets.")
def publish_cmd(bundles, url, token, local, config_path, allow_failed) -> None:
    """Publish BUNDLES (folders or .tar.gz archives); the registry verifies each signature first."""
    with _client(url, token, local, config_path) as client:
        for b in bundles:
            r = client.publish(Path(b), allow_failed)
            click.echo(
                f"{'published' if r['created'] else 'already there'}: {r['name']} {r['version']} {r['target']} (sha256 "
                f"{r['sha256'][:16]})"
            )


@release.command("list")
@_registry
@_token
@_local
@_config
def list_cmd(url, token, local, config_path) -> None:
    """List published releases."""
    with _client(url, token, local, config_path) as client:
        for r in client.releases():
            click.echo(
                f"{r['name']:16s} {r['version']:10s} {r['target']:10s} {r['size']:>10d} B  {r['sha256'][:16]}  "
                f"{r['published_at']}"
            )


@click.group()
def rollout() -> None:
    """Staged rollouts: create, watch, advance, pause, resume, roll back, export static manifests."""


def _show(r: dict) -> str:
    st = r["plan"]["stages"][r["stage"]]
    return (
        f"{r['name']}: {r['status']}, stage {r['stage'] + 1}/{len(r['plan']['stages'])} ({st['percent']:g}%), "
        f"release {r['plan']['release']['name']} {r['plan']['release']['version']} for {', '.join(r['releases'])}; "
        f"previous {r['previous'] or 'none'}"
    )


@rollout.command("create")
@click.option("--plan", "plan_path", default="configs/rollout.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a plan key, e.g. --set release.version=0.1.2.",
)
@_registry
@_token
@_local
@_config
def create_cmd(plan_path, overrides, url, token, local, config_path) -> None:
    """Create a staged rollout from a plan (release, cohort, stages, health rules)."""
    from ..config import load_yaml, merge, parse_overrides
    from .rollouts import check_plan

    plan = check_plan(merge(load_yaml(plan_path), parse_overrides(overrides)), plan_path)
    with _client(url, token, local, config_path) as client:
        click.echo(_show(client.create_rollout(plan)))


@rollout.command("status")
@click.argument("name", required=False)
@_registry
@_token
@_local
@_config
@click.option("--json", "as_json", is_flag=True)
def status_cmd(name, url, token, local, config_path, as_json) -> None:
    """Show one rollout with its audit log, or all rollouts."""
    with _client(url, token, local, config_path) as client:
        data = client.rollout(name) if name else client.rollouts()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for r in [data] if name else data:
        click.echo(_show(r))
        for a in r.get("audit", []):
            click.echo(f"  {a['ts']}  {a['actor']:14s} {a['action']:18s} {json.dumps(a['detail'])[:160]}")


def _action(action: str, doc: str):
    @click.argument("name")
    @click.option("--reason", default="", help="Why; goes into the audit log.")
    @_registry
    @_token
    @_local
    @_config
    def cmd(name, reason, url, token, local, config_path) -> None:
        with _client(url, token, local, config_path) as client:
            click.echo(_show(client.act(name, action, reason)))

    cmd.__doc__ = doc
    return rollout.command(action)(cmd)


_action("advance", "Move to the next stage (or complete at 100%: the release becomes stable).")
_action("pause", "Stop advancing; devices keep what they have.")
_action("resume", "Resume a paused or halted rollout.")
_action("rollback", "Return every device to the previous release.")


@rollout.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Signed static rollout manifest (JSON).")
@_registry
@_token
@_local
@_config
def export_cmd(out, url, token, local, config_path) -> None:
    """Write the fleet state as a signed, versioned static manifest any CDN can serve.

    Devices compute their assignment from it with the same rule as the service, and refuse a
    manifest that is unsigned, signed by another key, or older than the one they have.
    """
    from .._io import write_json

    with _client(url, token, local, config_path) as client:
        doc = client.fleet_manifest()
    write_json(out, doc)
    p = doc["payload"]
    click.echo(
        f"wrote {out}: sequence {p['sequence']}, {len(p['rollouts'])} active rollout(s), {len(p['releases'])} "
        "release(s), "
        f"signed by key {doc['signature']['key_id']}"
    )
