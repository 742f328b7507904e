"""The package's layers (drawn in factory/__init__.py): every import points down, never up.

The checker reads every module's source with ``ast`` (lazy imports inside functions count too) and
resolves relative imports. A module may import its own package, the floor (the modules directly in
``factory/``), and packages of lower rank; within a row of the drawing, a package may import the
ones to its left.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "factory"

# Rank of each package, bottom to top (the drawing's rows, left to right within a row).
LAYERS = [
    ["<floor>"],
    ["data", "monitor", "tasks"],
    ["bundle", "train", "device"],
    ["export", "bench", "registry"],
    ["pipeline", "loop"],
    ["cli"],
]
RANK = {}
for row in LAYERS:
    for name in row:
        RANK[name] = len(RANK)


def unit_of(module: str) -> str:
    """``factory.export.base`` -> ``export``; ``factory._io`` -> ``<floor>``; ``factory.cli`` -> ``cli``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "<floor>"
    top = parts[1]
    if top == "cli":
        return "cli"
    return top if (PACKAGE / top).is_dir() else "<floor>"


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """Absolute names of the factory modules that ``source`` imports."""
    out = set()
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "factory"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            if prefix.split(".")[0] != "factory":
                continue
            if node.module is None:  # from .. import progress: the names are modules
                out |= {f"{prefix}.{a.name}" for a in node.names}
            else:
                out.add(prefix)
    return out


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every upward (or sideways-right) import of ``module``."""
    own = unit_of(module)
    bad = []
    for target in sorted(imports_of(module, source, is_package)):
        dep = unit_of(target)
        if dep != own and RANK[dep] >= RANK[own] and dep != "<floor>":
            bad.append(f"{module} imports {target} ({own} may not import {dep})")
        elif own == "<floor>" and dep != "<floor>":
            bad.append(f"{module} imports {target} (the floor imports nothing above it)")
    return bad


def all_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), path, is_package


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= set(RANK), f"packages without a layer: {packages - set(RANK)}"


def test_imports_only_point_down():
    problems = []
    for module, path, is_package in all_modules():
        problems += violations(module, path.read_text(), is_package)
    assert not problems, "upward imports:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "module,source,expected",
    [
        ("factory.data.profile", "from ..monitor.stats import histogram", True),  # data below monitor
        ("factory.monitor.health", "from ..registry import db", True),
        ("factory.export.build", "def f():\n    from ..bench.quick import quick_latency", True),  # lazy imports count
        ("factory.device.agent", "import factory.registry.client", True),
        ("factory._io", "from .bundle import manifest", True),  # the floor imports nothing above it
        ("factory.bench.gate", "from ..export.base import get_backend", False),  # left within a row
        ("factory.pipeline.build", "from ..registry.local import local_client", False),
        ("factory.registry.app", "from . import db\nfrom .. import progress", False),
    ],
)
def test_the_checker_catches_upward_imports(module, source, expected):
    assert bool(violations(module, source)) is expected
