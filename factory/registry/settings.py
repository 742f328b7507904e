"""Registry settings: ``configs/registry.yaml`` plus environment overrides.

Embedded defaults: SQLite and a local folder. The same code takes PostgreSQL
(``postgresql+psycopg://...``) and any fsspec object store (``s3://bucket/prefix`` with s3fs), so
several stateless replicas can serve one fleet behind a load balancer.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Key, load_config, validate

__all__ = ["SETTINGS_SCHEMA", "load_settings", "check_settings", "default_settings"]

SETTINGS_SCHEMA = {
    "database": Key(str, "sqlite:///registry/registry.db", "SQLAlchemy URL (env FACTORY_REGISTRY_DB)"),
    "storage": Key(str, "registry/blobs", "folder or fsspec URL for bundle archives (env FACTORY_REGISTRY_STORAGE)"),
    "trusted_keys": Key(list, ["keys/signing.pub"], "public keys whose bundle signatures are accepted"),
    "fleet_key": Key(str, "keys/fleet.key", "private key that signs static rollout manifests"),
    "public_url": Key(str, "http://127.0.0.1:8700", "base URL devices use to download bundles"),
    "max_upload_mb": Key(int, 512),
    "max_json_bytes": Key(int, 1 << 20, "largest JSON body of any other request (plans, devices, one summary)"),
    "cache_seconds": Key(float, 1.0, "how long a replica serves assignments from its cached fleet state"),
    "allow_failed_bundles": Key(bool, False, "accept bundles whose manifest says validation.passed: false"),
    "telemetry": {
        "window_seconds": Key(int, 60, "length of a telemetry window"),
        "max_summary_bytes": Key(int, 65536),
        "max_inferences_per_second": Key(
            float, 100.0, "a summary's count may be at most this rate x its window (bounds one device's weight)"
        ),
        "max_batch_bytes": Key(int, 8 << 20, "largest /v1/telemetry/batch body"),
        "evaluate_seconds": Key(float, 5.0, "how often health rules are evaluated (0 = only on request)"),
        "retrain_windows": Key(
            int, 3, "consecutive drifting windows of a stable release that raise a retraining trigger"
        ),
        "retrain_max_psi": Key(float, 0.25, "PSI above which a stable release's window counts as drifting"),
        "retrain_max_js": Key(float, 0.1),
        "history_days": Key(
            float, 90.0, "how long the per-window figures behind the status pages' history are kept (days)"
        ),
        "raw_days": Key(float, 14.0, "how long raw device summaries are kept once their windows are rolled up (days)"),
    },
}


def _env(cfg: dict) -> dict:
    if os.environ.get("FACTORY_REGISTRY_DB"):
        cfg["database"] = os.environ["FACTORY_REGISTRY_DB"]
    if os.environ.get("FACTORY_REGISTRY_STORAGE"):
        cfg["storage"] = os.environ["FACTORY_REGISTRY_STORAGE"]
    return cfg


def load_settings(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Registry settings from a YAML file (or the defaults), then environment overrides."""
    cfg = load_config(path, SETTINGS_SCHEMA) if path else validate({}, SETTINGS_SCHEMA, "registry defaults")
    cfg = _env(cfg)
    for k, v in (overrides or {}).items():
        cfg[k] = v
    return cfg


def check_settings(settings: dict, source: str = "registry settings") -> dict:
    """Settings handed over in code (a test, the fleet demo, the server's environment), validated and
    completed with defaults like a settings file."""
    return validate(settings, SETTINGS_SCHEMA, source)


def default_settings(**overrides) -> dict:
    """The defaults with ``overrides`` applied."""
    return load_settings(None, overrides)
