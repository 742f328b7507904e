"""Where an artifact came from: git revision, package versions, host. Small and dependency-free."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["git_revision", "package_versions", "host_info"]


def git_revision(cwd: str | Path = ".") -> dict:
    """The git commit and whether the work tree is dirty (None outside a repository)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"revision": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def package_versions(names: list[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None if missing)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ARM's "CPU implementer" and "CPU part" codes for the cores edge boards and ARM servers carry
_ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x48: "HiSilicon", 0x51: "Qualcomm", 0x61: "Apple", 0xC0: "Ampere"}
_ARM_PARTS = {
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77",
    0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78",
    0xD44: "Cortex-X1",
    0xD46: "Cortex-A510",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD49: "Neoverse-N2",
    0xD4B: "Cortex-A78C",
    0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3",
    0xD4F: "Neoverse-V2",
    0xD80: "Cortex-A520",
    0xD81: "Cortex-A720",
    0xD82: "Cortex-X4",
}
# ARM features that decide int8/fp16 speed: NEON (asimd), the int8 dot product (asimddp), int8 matrix
# multiply (i8mm), fp16 arithmetic (asimdhp), bf16 and the scalable vectors
_ARM_FLAGS = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2", "sme")


def _cpuinfo_fields(text: str) -> tuple[dict[str, str], set[str]]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first core's line (and the board's Hardware/Model)
            fields[key.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return fields, flags


def _board_model() -> str | None:
    for path in ("/sys/firmware/devicetree/base/model", "/proc/device-tree/model"):
        try:
            return Path(path).read_bytes().rstrip(b"\0").decode(errors="replace").strip() or None
        except OSError:
            continue
    return None


def _arm_cpu(fields: dict[str, str]) -> str | None:
    try:
        implementer = int(fields.get("CPU implementer", ""), 16)
        part = int(fields.get("CPU part", ""), 16)
    except ValueError:
        return None
    vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer:#x}")
    return f"{vendor} {_ARM_PARTS.get(part, f'part {part:#x}')}" if implementer == 0x41 else f"{vendor} {part:#x}"


def host_info(cpuinfo: str | None = None, machine: str | None = None, board: str | None = None) -> dict:
    """CPU model and the instruction-set flags that decide int8/fp16 speed: VNNI, AVX-512, AMX on x86; NEON,
    dot product, i8mm, fp16 on ARM (with the board's model from the device tree where there is one).
    Under user-mode emulation (an aarch64 Python on an x86 host, qemu) the kernel still reports the host's
    CPU: the facts say ``emulated`` and name no ARM CPU. Arguments are for tests (defaults: this host)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    machine = machine or platform.machine()
    fields, flags = _cpuinfo_fields(cpuinfo)
    arm = machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm")
    x86_kernel = "model name" in fields and "vendor_id" in fields
    facts = {
        "cpu": None,
        "cores": os.cpu_count(),
        "machine": machine,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    if arm and x86_kernel:  # qemu user mode: an ARM process reading an x86 kernel's cpuinfo
        return facts | {
            "cpu": f"emulated {machine} on {fields['model name']}",
            "emulated": True,
            "flags": [],
            "neon": None,
            "dotprod": None,
            "i8mm": None,
        }
    if arm:
        board = board if board is not None else _board_model()
        cpu = _arm_cpu(fields) or fields.get("model name") or platform.processor() or "unknown"
        return facts | {
            "cpu": f"{cpu} ({board})" if board else cpu,
            "flags": sorted(f for f in flags if f in _ARM_FLAGS),
            "neon": "asimd" in flags or "neon" in flags,
            "dotprod": "asimddp" in flags,
            "i8mm": "i8mm" in flags,
        }
    interesting = sorted(f for f in flags if f.startswith(("avx", "amx", "f16c", "fma", "sse4", "vnni")) or "vnni" in f)
    return facts | {
        "cpu": fields.get("model name") or platform.processor() or "unknown",
        "flags": interesting,
        "vnni": any("vnni" in f for f in flags),
        "avx512": any(f.startswith("avx512") for f in flags),
    }
