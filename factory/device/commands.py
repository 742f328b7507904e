"""``factory device enroll|run|check`` and ``factory fleet simulate``."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["device", "fleet"]


@click.group()
def device() -> None:
    """Run the device agent (pull, verify, swap, infer, report)."""


def _state_dir(state_dir: str | None, device_id: str) -> Path:
    return Path(state_dir or Path.home() / ".factory-device" / device_id)


@device.command("enroll")
@click.option("--registry", "url", default=None, help="Registry URL [default: $FACTORY_REGISTRY_URL].")
@click.option(
    "--token", default=None, help="The fleet's enrolment token (or an admin token) [default: $FACTORY_REGISTRY_TOKEN]."
)
@click.option("--device-id", required=True)
@click.option("--target", required=True, help="The device's target (cpu, openvino, tflite...).")
@click.option("--tags", default="", help="Comma-separated device tags, e.g. region-eu,shop-12.")
@click.option(
    "--state-dir", default=None, type=click.Path(file_okay=False), help="[default: ~/.factory-device/<device-id>]"
)
@click.option(
    "--token-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write only the device token here (mode 0600), e.g. for systemd's LoadCredential, "
    "instead of STATE_DIR/credentials.json.",
)
def enroll_cmd(url, token, device_id, target, tags, state_dir, token_file) -> None:
    """Enrol this device once: the registry issues it its own token, bound to --device-id.

    The token is written to STATE_DIR/credentials.json (mode 0600) and `factory device run` uses it;
    with --token-file, to that file alone (the service unit hands it to the agent as a credential).
    With it the device can pull bundles and report about itself only; an enrolment token cannot
    enrol a device id that is already enrolled (an admin can, which revokes its old token).
    """
    import os

    from .._io import atomic_write, write_json
    from .client import RegistryClient

    state = _state_dir(state_dir, device_id)
    with RegistryClient(url, token) as client:
        answer = client.enroll(device_id, target, [t for t in tags.split(",") if t])
    if token_file:
        path = atomic_write(token_file, answer["token"] + "\n")
    else:
        path = write_json(
            state / "credentials.json", {"device_id": device_id, "token": answer["token"], "registry": url}
        )
    os.chmod(path, 0o600)
    click.echo(f"enrolled {device_id} ({target}); its token is in {path}")


ENROL_HINT = "write it with `factory device enroll ... --token-file PATH` (or pass --token)"
TOKEN_CREDENTIAL = "device-token"  # the credential's name in the service unit (LoadCredential=device-token:...)


def _credential(state: Path, device_id: str, token: str | None, token_file: str | None = None) -> str | None:
    """--token, else --token-file, else systemd's $CREDENTIALS_DIRECTORY/device-token, else the state
    folder's credentials.json (what `enroll` wrote), else $FACTORY_REGISTRY_TOKEN (read by the client)."""
    import os

    from .._io import read_json
    from ..errors import InputError

    if token:
        return token
    creds_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if token_file is None and creds_dir and (Path(creds_dir) / TOKEN_CREDENTIAL).is_file():
        token_file = str(Path(creds_dir) / TOKEN_CREDENTIAL)
    if token_file:
        try:
            value = Path(token_file).read_text().strip()
        except OSError as exc:
            raise InputError(
                f"cannot read the device token from {token_file}: {exc.strerror}", hint=ENROL_HINT
            ) from None
        if not value or len(value) > 512 or any(c.isspace() for c in value):
            raise InputError(f"{token_file} does not hold one device token", hint=ENROL_HINT)
        return value
    path = state / "credentials.json"
    if not path.is_file():
        return None
    creds = read_json(path)
    if creds.get("device_id") != device_id:
        raise InputError(f"{path} holds the credential of device {creds.get('device_id')!r}, not {device_id!r}")
    return creds.get("token")


@device.command("run")
@click.option("--registry", "url", default=None, help="Registry URL [default: $FACTORY_REGISTRY_URL].")
@click.option(
    "--token", default=None, help="Device token [default: STATE_DIR/credentials.json, then $FACTORY_REGISTRY_TOKEN]."
)
@click.option("--device-id", required=True)
@click.option("--target", required=True, help="The device's target (cpu, openvino, tflite...).")
@click.option("--model", default="id-docs", show_default=True)
@click.option("--tags", default="", help="Comma-separated device tags, e.g. region-eu,shop-12.")
@click.option("--source", required=True, help="Frames: a folder of images, a video file, or camera:0.")
@click.option(
    "--trusted-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Public key bundles must be signed with.",
)
@click.option(
    "--fleet-key",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Take assignments from the signed static fleet manifest, verified with this public key.",
)
@click.option(
    "--state-dir", default=None, type=click.Path(file_okay=False), help="[default: ~/.factory-device/<device-id>]"
)
@click.option("--window-seconds", default=60, show_default=True)
@click.option("--poll-seconds", default=30.0, show_default=True)
@click.option(
    "--frames", "max_frames", default=None, type=int, help="Stop after this many frames (default: run forever)."
)
@click.option("--fps", default=None, type=float, help="Limit the frame rate.")
@click.option(
    "--token-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Read the device token from this file [default: $CREDENTIALS_DIRECTORY/device-token under systemd].",
)
def run_cmd(
    url,
    token,
    device_id,
    target,
    model,
    tags,
    source,
    trusted_key,
    fleet_key,
    state_dir,
    window_seconds,
    poll_seconds,
    max_frames,
    fps,
    token_file,
) -> None:
    """Serve a model on this device and keep it up to date.

    Polls its assignment (ETag-aware; or, with --fleet-key, computes it from the signed static fleet
    manifest, refusing unsigned, foreign or older ones), downloads the bundle (resumable), checks
    its sha256 and the manifest's signature against --trusted-key before unpacking, verifies every
    file, swaps the active model atomically and keeps the previous one. Runs inference on --source
    with the bundle's preprocessing and uploads compact telemetry per window (buffered on disk while
    offline; retried with backoff; idempotent). Whatever fails while syncing, the old model keeps
    serving; a bundle that failed to load is retried only after a back-off.
    """
    import time

    from ..bundle.signing import load_public_key
    from .agent import Agent
    from .client import RegistryClient
    from .sources import frames

    state = _state_dir(state_dir, device_id)
    client = RegistryClient(url, _credential(state, device_id, token, token_file))
    agent = Agent(
        client,
        model=model,
        device_id=device_id,
        target=target,
        tags=[t for t in tags.split(",") if t],
        state_dir=state,
        bundle_key=load_public_key(trusted_key),
        window_seconds=window_seconds,
        fleet_key=load_public_key(fleet_key) if fleet_key else None,
    )
    click.echo(f"device {device_id} ({target}) state in {state}; first poll: {agent.sync()}", err=True)

    def paced():
        for f in frames(source):
            if fps:
                time.sleep(1 / fps)
            yield f

    counts = agent.run(paced(), poll_seconds=poll_seconds, max_frames=max_frames)
    click.echo(json.dumps(counts | {"release": agent.release_key, "last_error": agent.last_error}))


@device.command("check")
@click.argument("bundle_path", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--trusted-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Public key the bundle must be signed with.",
)
@click.option(
    "--inputs",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A .npy batch of preprocessed inputs (N, C, H, W float32) to run; default: one zero image.",
)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the outputs (logits) as .npy here.")
@click.option("--batch", default=32, show_default=True, help="Images per call.")
def check_cmd(bundle_path, trusted_key, inputs, out, batch) -> None:
    """Check that this device can run a bundle: signature and file hashes, the runtime loads it, it runs.

    Prints one JSON object: the host's facts (CPU, ARM/x86 features, whether this process runs
    emulated), the runtime and its version, the bundle, and how many inputs ran. With --inputs and
    --out, the outputs are written for a build machine to compare against the canonical model
    (`factory bundle parity` does that on an emulated or real arm64 board).

    \b
    Example (on a board, after installing the device extra):
      factory device check bundles/id-docs/1.2.0/tflite --trusted-key signing.pub
    """
    import time

    import numpy as np

    from .._io import atomic_write
    from ..bundle.signing import load_public_key
    from ..errors import InputError
    from ..lineage import host_info
    from .loader import open_bundle
    from .runtimes import get_runtime

    manifest, runner = open_bundle(bundle_path, load_public_key(trusted_key))
    batch = max(1, batch)
    if inputs:
        try:
            x = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{inputs} is not a .npy array: {exc}") from None
        if x.dtype != np.float32 or x.ndim != 4:
            raise InputError(f"{inputs}: want a float32 array of shape (N, C, H, W), got {x.dtype} {x.shape}")
    else:
        shape = [int(v) if isinstance(v, int) else 1 for v in manifest.input["shape"]]
        x = np.zeros(shape, np.float32)
    started = time.perf_counter()
    y = np.concatenate([runner(x[i : i + batch]) for i in range(0, len(x), batch)])
    seconds = time.perf_counter() - started
    if out:
        import io

        buf = io.BytesIO()
        np.save(buf, y.astype(np.float32), allow_pickle=False)
        atomic_write(out, buf.getvalue())
    runtime = get_runtime(manifest.runtime["backend"])
    click.echo(
        json.dumps(
            {
                "host": host_info(),
                "runtime": {"backend": runtime.name, "package": runtime.package, "version": runtime.version()},
                "bundle": manifest.key,
                "inputs": int(len(x)),
                "outputs_shape": list(y.shape),
                # wall time of the whole batch loop: a smoke figure, not a latency (use factory bench for that)
                "run_seconds": round(seconds, 3),
            }
        )
    )


@click.group()
def fleet() -> None:
    """Simulate device fleets against a registry."""


@fleet.command("simulate")
@click.option("--registry", "url", default=None)
@click.option("--token", default=None, help="An admin token (the simulator also asks the monitor to evaluate).")
@click.option("--devices", default=100, show_default=True)
@click.option("--targets", default="cpu,tflite", show_default=True)
@click.option("--model", default="id-docs", show_default=True)
@click.option("--windows", default=10, show_default=True)
@click.option(
    "--window-seconds", default=60, show_default=True, help="Must match the registry's telemetry.window_seconds."
)
@click.option("--inferences", default=20, show_default=True, help="Inferences per device per window.")
@click.option(
    "--images",
    "image_dir",
    required=True,
    type=click.Path(exists=True),
    help="Dataset (manifest folder): its test images feed the devices.",
)
@click.option(
    "--via",
    type=click.Choice(["service", "manifest"]),
    default="service",
    show_default=True,
    help="Ask the service per device, or compute assignments from the signed static manifest (needs --fleet-key).",
)
@click.option(
    "--fleet-key",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The fleet's public key: static manifests are verified with it (anti-rollback by sequence).",
)
@click.option(
    "--trusted-key",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Public key bundles must be signed with (checked before unpacking).",
)
@click.option("--slow-release", default=None, help="Version whose latency is multiplied by --slowdown.")
@click.option("--slowdown", default=1.3, show_default=True)
@click.option("--dark-release", default=None, help="Version whose devices see darker inputs (drift).")
@click.option("--dark-share", default=0.0, show_default=True, help="Share of devices that see darker inputs.")
@click.option(
    "--fail-share", default=0.0, show_default=True, help="Share of devices whose inferences fail half the time."
)
@click.option(
    "--retry-share", default=0.0, show_default=True, help="Share of uploads sent twice (must not count twice)."
)
@click.option("--cache", default=".factory/fleet-cache", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the per-window history as JSON.")
def simulate_cmd(
    url,
    token,
    devices,
    targets,
    model,
    windows,
    window_seconds,
    inferences,
    image_dir,
    via,
    fleet_key,
    trusted_key,
    slow_release,
    slowdown,
    dark_release,
    dark_share,
    fail_share,
    retry_share,
    cache,
    out,
) -> None:
    """Run N simulated devices that pull and report; print what the fleet ran and what the monitor decided."""
    from .._io import write_json
    from ..bundle.signing import load_public_key
    from .client import RegistryClient
    from .simulate import Fleet, Knobs, load_images

    if via == "manifest" and not fleet_key:
        raise click.UsageError("--via manifest verifies the signed static manifest: pass --fleet-key")

    knobs = Knobs(
        slow_release=slow_release,
        slowdown=slowdown,
        dark_release=dark_release,
        dark_share=dark_share,
        fail_share=fail_share,
        retry_share=retry_share,
    )
    with RegistryClient(url, token) as client:
        sim = Fleet(
            client,
            model=model,
            devices=devices,
            targets=targets.split(","),
            knobs=knobs,
            images=load_images(image_dir),
            cache=Path(cache),
            window_seconds=window_seconds,
            fleet_key=load_public_key(fleet_key) if fleet_key else None,
            bundle_key=load_public_key(trusted_key) if trusted_key else None,
        )

        def show(row):
            running = ", ".join(f"{k.split('/')[1]}x{v}" for k, v in sorted(row["running"].items()))
            acts = "; ".join(f"{d['action']} {d['rollout']}" for d in row["decisions"])
            click.echo(
                f"window {row['window'] + 1}: running {running}; uploaded "
                f"{row['uploaded']}{'; ' + acts if acts else ''}"
            )

        history = sim.simulate(windows, inferences=inferences, via=via, on_window=show)
    if out:
        write_json(out, history)
