"""The registry in-process: ``factory ... --local`` and the main job's fleet demo, with no server to start.

:func:`local_client` builds the registry app on the given settings (their database and blob store)
and returns a :class:`~factory.device.client.RegistryClient` whose requests go straight into the app,
with a short-lived admin token that is revoked when the client closes.
"""

from __future__ import annotations

import os

from ..device.client import RegistryClient

__all__ = ["local_client"]


def local_client(settings: dict) -> RegistryClient:
    """A registry client talking to an in-process registry app built from ``settings``."""
    from fastapi.testclient import TestClient

    from .app import create_app
    from .auth import create_token, revoke_token

    app = create_app(settings)
    name = f"local-cli-{os.getpid()}"
    engine = app.state.engine
    with engine.begin() as conn:
        token = create_token(conn, name, "admin")

    def revoke() -> None:
        with engine.begin() as conn:
            revoke_token(conn, name)

    return RegistryClient(token=token, http=TestClient(app, base_url="http://local"), on_close=revoke)
