"""The device side on arm64, emulated on the x86 build host: the documentation's board page, run as written
inside a Debian arm64 root (scripts/arm64-root.sh), gives an agent that enrols, pulls, verifies, activates
and serves a bundle from a registry on the host; and a tflite bundle's parity on arm64 lands in its
manifest. Needs root and FACTORY_TEST_ARM64_ROOT (a folder for the root; .ci/run sets it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, build_args, db_url, invoke
from tests.registry_server import Server, make_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("FACTORY_TEST_ARM64_ROOT") or os.geteuid() != 0,
        reason="set FACTORY_TEST_ARM64_ROOT (a folder for an emulated arm64 root) and run as root",
    ),
]


@pytest.fixture(scope="module")
def arm_root():
    """The arm64 root with the device install of the documentation's board page (cached across runs)."""
    from factory.pipeline.platforms import ArmRoot

    path = os.environ["FACTORY_TEST_ARM64_ROOT"]
    done = subprocess.run(
        [str(ROOT / "scripts" / "arm64-root.sh"), path], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    if done.returncode == 3:
        pytest.skip(f"no arm64 emulation on this host: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return ArmRoot(path)


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    out = tmp_path_factory.mktemp("arm-bundles")
    r = invoke(*build_args(trained.path, "tflite", keypair, loose_targets, out, "--data", str(synth_ds), "--no-track"))
    assert r.exit_code == 0, r.output
    return next(out.glob("*/*/tflite"))


def test_the_board_section_gives_an_agent_that_serves_a_bundle_from_the_registry(
    arm_root, tflite_bundle, tmp_path, keypair, synth_ds, trained
):
    from factory.device.client import RegistryClient
    from factory.registry import db
    from factory.registry.auth import create_token

    settings = make_settings(tmp_path, db_url("sqlite", tmp_path), [str(keypair[1])], str(keypair[0]))
    srv = Server(settings).start()
    try:
        engine = db.engine_for(settings["database"])
        with engine.begin() as conn:
            admin, enrol = create_token(conn, "admin", "admin"), create_token(conn, "line-3", "enroll")
        model = trained.card["name"]
        with RegistryClient(srv.url, admin) as client:
            client.publish(tflite_bundle)
            version = json.loads((tflite_bundle / "manifest.json").read_text())["version"]
            plan = {"name": "arm", "release": {"name": model, "version": version}, "stages": [{"percent": 100}]}
            client.create_rollout(plan)
            client.act("arm", "advance", "to the board")
        host_dir, inside = arm_root.scratch()
        shutil.copyfile(keypair[1], host_dir / "signing.pub")
        frames = sorted((synth_ds / "images").rglob("*.jpg"))[:6]
        (host_dir / "frames").mkdir()
        for f in frames:
            shutil.copyfile(f, host_dir / "frames" / f.name)
        agent = "/opt/factory-agent/bin/factory"
        state = f"{inside}/state"
        enrolled = arm_root.run(
            [agent, "device", "enroll", "--registry", srv.url, "--token", enrol, "--device-id", "arm-board-1"]
            + ["--target", "tflite", "--token-file", f"{inside}/device-token"]
        )
        assert enrolled.returncode == 0, enrolled.stderr
        assert oct((host_dir / "device-token").stat().st_mode & 0o777) == "0o600"
        ran = arm_root.run(
            [agent, "-q", "device", "run", "--registry", srv.url, "--device-id", "arm-board-1", "--target", "tflite"]
            + ["--model", model, "--source", f"{inside}/frames", "--trusted-key", f"{inside}/signing.pub"]
            + ["--state-dir", state, "--token-file", f"{inside}/device-token", "--frames", "6"]
            + ["--window-seconds", "1", "--poll-seconds", "60"]
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        counts = json.loads(ran.stdout.strip().splitlines()[-1])
        assert counts["frames"] == 6 and counts["release"] == f"{model}/{version}/tflite", counts
        active = json.loads((host_dir / "state" / "active.json").read_text())
        assert active["release"] == f"{model}/{version}/tflite"  # verified, unpacked and swapped in on arm64
        assert list((host_dir / "state" / "outbox").glob("*.json")) == []  # its telemetry was uploaded...
        import sqlalchemy as sa

        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(db.telemetry.c.summary).where(db.telemetry.c.device_id == "arm-board-1")
            ).all()
        assert sum(json.loads(r.summary)["count"] for r in rows) == 6  # ...and stored: six inferences on arm64
    finally:
        srv.stop()


def test_a_tflite_bundles_arm64_parity_goes_into_its_manifest(
    arm_root, tflite_bundle, tmp_path, keypair, trained, synth_ds
):
    bundle = tmp_path / "b"
    shutil.copytree(tflite_bundle, bundle)
    r = invoke(
        "bundle", "parity", str(bundle), "--root", str(arm_root.path), "--model", str(trained.path),
        "--data", str(synth_ds), "--key", str(keypair[0]), "--trusted-key", str(keypair[1]),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "linux/arm64 (emulated (qemu user mode)" in r.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    section = manifest["validation"]["platforms"]["linux/arm64"]
    assert section["environment"] == "emulated (qemu user mode)" and section["host"]["machine"] == "aarch64"
    assert section["runtime"]["backend"] == "litert" and section["runtime"]["version"]
    p = section["parity"]
    assert p["n"] == manifest["validation"]["parity"]["n"] and 0.9 <= p["top1_agreement"] <= 1.0
    assert section["accuracy_drop"]["verdict"] in ("pass", "inconclusive", "fail") and "accuracy_drop_pt" in p
    assert section["vs_build_host"]["top1_agreement"] >= 0.9
    assert "not measured" in section["latency"]  # no emulated latency is ever reported
    assert invoke("bundle", "verify", str(bundle), "--pubkey", str(keypair[1])).exit_code == 0  # signed again


def test_parity_refuses_a_folder_that_is_not_an_arm64_root(tmp_path, tflite_bundle, keypair, trained):
    r = invoke(
        "bundle", "parity", str(tflite_bundle), "--root", str(tmp_path), "--model", str(trained.path),
        "--key", str(keypair[0]), "--trusted-key", str(keypair[1]),
    )  # fmt: skip
    assert r.exit_code == 2 and "is not a linux/arm64 root" in r.output
