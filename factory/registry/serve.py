"""ASGI entry point for uvicorn (``factory registry serve`` passes settings through the environment)."""

from __future__ import annotations

import json
import os

from .app import create_app
from .settings import load_settings

_raw = os.environ.get("FACTORY_REGISTRY_SETTINGS")
app = create_app(json.loads(_raw) if _raw else load_settings(os.environ.get("FACTORY_REGISTRY_CONFIG")))
