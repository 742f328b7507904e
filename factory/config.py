"""YAML configuration files checked against a declared schema.

A schema is a nested dict whose leaves are :class:`Key` objects. :func:`load_config` reads a YAML
file, applies ``--set section.key=value`` overrides, and returns plain nested dicts with defaults
filled in. It gathers *every* problem (missing keys, unknown keys with a "did you mean", wrong types,
values outside their choices) and raises one :class:`~factory.errors.ConfigError` naming the file
and each key.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from ._io import canonical_json
from .errors import ConfigError

__all__ = ["Key", "REQUIRED", "load_yaml", "load_config", "validate", "merge", "parse_overrides", "config_hash"]

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One leaf of a schema: its type(s), default (or REQUIRED), allowed choices and help text."""

    type: type | tuple[type, ...]
    default: Any = REQUIRED
    help: str = ""
    choices: Iterable[Any] | None = None
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    nullable: bool = False

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return "|".join(t.__name__ for t in types)


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping; a missing file or bad YAML is a ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", hint="check the path, or copy one from configs/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def parse_overrides(pairs: Iterable[str]) -> dict:
    """Turn ``["train.epochs=3", "model.architecture=resnet18"]`` into a nested dict (YAML scalars)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not KEY=VALUE", hint="e.g. --set train.epochs=3")
        dotted, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` recursively (``over`` wins); neither is modified."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _type_ok(value: Any, key: Key) -> bool:
    if value is None:
        return key.nullable
    types = key.type if isinstance(key.type, tuple) else (key.type,)
    if isinstance(value, bool) and bool not in types:
        return False
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def validate(data: dict, schema: dict, source: str) -> dict:
    """Check ``data`` against ``schema``; return a copy with defaults filled in."""
    problems: list[str] = []
    out = _validate(data, schema, "", problems)
    if problems:
        listing = "\n  - ".join(problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n  - {listing}")
    return out


def _validate(data: Any, schema: dict, prefix: str, problems: list[str]) -> dict:
    if not isinstance(data, dict):
        problems.append(f"'{prefix.rstrip('.')}' must be a mapping, got {type(data).__name__}")
        return {}
    out: dict = {}
    for name in data:
        if name not in schema:
            close = difflib.get_close_matches(str(name), list(schema), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(schema)}"
            problems.append(f"unknown key '{prefix}{name}'{hint}")
    for name, spec in schema.items():
        dotted = f"{prefix}{name}"
        if isinstance(spec, dict):
            out[name] = _validate(data.get(name, {}), spec, dotted + ".", problems)
            continue
        if name not in data:
            if spec.default is REQUIRED:
                problems.append(f"missing key '{dotted}' ({spec.type_name()}): {spec.help}")
                continue
            out[name] = spec.default
            continue
        value = data[name]
        if not _type_ok(value, spec):
            problems.append(f"'{dotted}' must be {spec.type_name()}, got {value!r}")
            continue
        if spec.choices is not None and value not in spec.choices:
            problems.append(f"'{dotted}' is {value!r}; valid values: {', '.join(map(str, spec.choices))}")
            continue
        if spec.check is not None and value is not None:
            msg = spec.check(value)
            if msg:
                problems.append(f"'{dotted}' {msg}")
                continue
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # 0 and 0.0 are one setting: same resolved config, same cache keys
        out[name] = value
    return out


def load_config(path: str | Path, schema: dict, overrides: Iterable[str] = ()) -> dict:
    """Read, override and validate a YAML config file."""
    data = merge(load_yaml(path), parse_overrides(overrides))
    return validate(data, schema, str(path))


def config_hash(cfg: dict) -> str:
    """sha256 of a config's canonical JSON."""
    return hashlib.sha256(canonical_json(cfg)).hexdigest()
