"""A bundle's parity checked on the device's architecture: an arm64 root on an x86 build host.

The root is a Debian arm64 system (``scripts/arm64-root.sh`` makes one with debootstrap) run through
qemu user-mode emulation (binfmt_misc), with the factory's device install at ``/opt/factory-agent``
exactly as the documentation's "Install on a board" page makes it. The bundle, its public key and the
preprocessed test split are copied into the root; ``factory device check`` runs there (signature and
hashes, the runtime loads it, every image runs) and writes the outputs; back on the build host they are
compared with the canonical model's, image by image, and with the same bundle's outputs on the build
host. The section goes into the manifest under ``validation.platforms["linux/arm64"]`` and the bundle
is signed again. Latency under emulation measures the emulator: it is never recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import InputError

__all__ = ["PLATFORMS", "AGENT", "ArmRoot", "platform_parity"]

PLATFORMS = {"linux/arm64": 0xB7}  # the ELF machine of the root's binaries (EM_AARCH64)
AGENT = "/opt/factory-agent/bin/factory"  # where the documentation's board page installs the device side


def _elf_machine(path: Path) -> int | None:
    try:
        head = path.read_bytes()[:20]
    except OSError:
        return None
    return int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else None


class ArmRoot:
    """A foreign-architecture root entered with chroot (binfmt_misc runs its binaries through qemu)."""

    def __init__(self, path: str | Path, platform: str = "linux/arm64"):
        self.path = Path(path).resolve()
        if platform not in PLATFORMS:
            raise InputError(f"platform {platform!r} is not one of {', '.join(PLATFORMS)}")
        self.platform = platform
        python = self.path / "usr" / "bin" / "python3"
        if _elf_machine(python.resolve() if python.is_symlink() else python) != PLATFORMS[platform]:
            raise InputError(
                f"{self.path} is not a {platform} root (no {platform} python3 in usr/bin)",
                hint="make one with scripts/arm64-root.sh ROOT",
            )
        if not (self.path / AGENT.lstrip("/")).exists():
            raise InputError(
                f"{self.path} has no device install at {AGENT}",
                hint="follow the docs' 'Install on a board' page inside the root (scripts/arm64-root.sh does)",
            )
        if os.geteuid() != 0:
            raise InputError("entering an emulated root needs chroot, which needs root", hint="run as root (CI does)")

    @contextlib.contextmanager
    def mounted(self):
        """/proc and /dev inside the root for the duration (left as found)."""
        done = []
        for target, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            where = self.path / target
            where.mkdir(exist_ok=True)
            if subprocess.run(["mountpoint", "-q", str(where)]).returncode != 0:
                subprocess.run(["mount", *args, str(where)], check=True)
                done.append(where)
        try:
            yield self
        finally:
            for where in reversed(done):
                subprocess.run(["umount", "-l", str(where)], check=False)

    def run(self, args: list[str], timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the root (with a clean environment), capturing its output."""
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        cmd = ["chroot", str(self.path), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in (base | (env or {})).items())]
        with self.mounted():
            return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)

    def scratch(self) -> tuple[Path, str]:
        """A fresh folder inside the root: (its path on the host, its path inside)."""
        inside = f"/tmp/factory-{uuid.uuid4().hex[:12]}"
        host = self.path / inside.lstrip("/")
        host.mkdir(parents=True)
        return host, inside


def platform_parity(
    bundle: str | Path,
    root: ArmRoot,
    *,
    model_dir: str | Path,
    data: str | None,
    public_key_path: str | Path,
    private_key,
) -> dict:
    """Run ``bundle`` inside ``root`` on the test split, compare, and sign the section into its manifest."""
    from ..bench.budgets import CONFIDENCE
    from ..bundle.archive import verify_bundle
    from ..bundle.manifest import copy_resigned
    from ..bundle.signing import load_public_key
    from ..device.loader import open_bundle
    from ..proportions import non_inferiority
    from .build import load_context, run_batches

    bundle = Path(bundle)
    manifest = verify_bundle(bundle, load_public_key(public_key_path))["manifest"]
    ctx = load_context(model_dir, data)
    if manifest.lineage["canonical"]["weights_sha256"] != ctx.canonical.identity:
        raise InputError(f"{bundle} was not built from the model in {model_dir}")
    host_dir, inside = root.scratch()
    try:
        shutil.copytree(bundle, host_dir / "bundle")
        shutil.copyfile(public_key_path, host_dir / "key.pub")
        np.save(host_dir / "x.npy", ctx.x_test.astype(np.float32), allow_pickle=False)
        progress.info(f"running {manifest.key} on {len(ctx.x_test)} test images inside {root.path} ({root.platform})")
        done = root.run(
            [AGENT, "-q", "device", "check", f"{inside}/bundle", "--trusted-key", f"{inside}/key.pub"]
            + ["--inputs", f"{inside}/x.npy", "--out", f"{inside}/y.npy"]
        )
        if done.returncode != 0:
            raise InputError(
                f"`factory device check` failed inside {root.path} (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        outputs = np.load(host_dir / "y.npy", allow_pickle=False)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    if outputs.shape != ctx.reference.shape:
        raise InputError(
            f"the {root.platform} run returned outputs of shape {outputs.shape}, not {ctx.reference.shape}"
        )
    parity = ctx.task.parity(outputs, ctx.reference, ctx.y_test)
    _, here = open_bundle(bundle)  # the same bundle on the build host: what differs is the architecture
    on_host = run_batches(here, ctx.x_test)
    margin = (manifest.validation.get("budgets") or {}).get("max_accuracy_drop_pt")
    classification = "lost" in parity
    drop = (
        non_inferiority(parity["lost"], parity["gained"], parity["n"], margin, CONFIDENCE)
        if margin and classification
        else None
    )
    section = {
        "platform": root.platform,
        "environment": "emulated (qemu user mode)" if facts["host"].get("emulated") else "native",
        "host": facts["host"],
        "runtime": facts["runtime"],
        "split": "test",
        "dataset_hash": ctx.dataset.dataset_hash,
        "parity": parity,
        "accuracy_drop": drop,
        "vs_build_host": {
            "top1_agreement": round(float((outputs.argmax(1) == on_host.argmax(1)).mean()), 6)
            if classification
            else None,
            "max_abs_diff": float(np.abs(outputs.astype(np.float64) - on_host).max()),
        },
        "latency": "not measured: under emulation it would measure the emulator"
        if facts["host"].get("emulated")
        else "not measured here: run `factory bench` on the board",
        "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    def edit(m) -> None:
        m.validation.setdefault("platforms", {})[root.platform] = section

    copy_resigned(bundle, bundle, private_key, edit)
    return section
