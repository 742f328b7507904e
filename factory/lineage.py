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


def host_info() -> dict:
    """CPU model and the instruction-set flags that decide int8/fp16 speed (VNNI, AVX-512, AMX)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or "unknown"
    interesting = sorted(f for f in flags if f.startswith(("avx", "amx", "f16c", "fma", "sse4", "vnni")) or "vnni" in f)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "flags": interesting,
        "vnni": any("vnni" in f for f in flags),
        "avx512": any(f.startswith("avx512") for f in flags),
    }
