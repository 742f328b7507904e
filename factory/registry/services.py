"""What every route of the registry shares: settings, database, blob store, caches, and auth."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, HTTPException
from fastapi import Path as PathParam

from .auth import Identity

__all__ = ["NAME", "DEVICE", "TAGS", "Name", "Services", "Auth", "require_device", "matches"]

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
DEVICE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
TAGS = r"^[A-Za-z0-9._:=,-]{0,1000}$"
Name = Annotated[str, PathParam(pattern=NAME)]


def matches(pattern: str, value: object) -> bool:
    """Is ``value`` a string matching ``pattern`` in full?"""
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


@dataclass
class Services:
    """One registry process's shared objects (built by :func:`factory.registry.app.create_app`)."""

    settings: dict
    engine: object
    store: object
    states: object  # StateCache
    tokens: object  # TokenCache
    keys: list  # trusted public keys for bundle signatures
    uploads: Path  # this process's temp folder for uploads
    hooks: dict = field(default_factory=lambda: {"start": [], "stop": []})

    def auth(self) -> "Auth":
        """The authentication dependencies of this process's routes."""
        return Auth(self.tokens)


class Auth:
    """FastAPI dependencies that turn a bearer token into an :class:`~factory.registry.auth.Identity`.

    ``caller``: any valid token except an enrolment token (that one only enrols); ``admin``;
    ``reader``: admin or viewer; ``enroller``: admin or enrolment token. Device-specific routes also
    check :meth:`Identity.speaks_for` against the device id they are about.
    """

    def __init__(self, tokens):
        # async: they read an in-memory cache (a database read at most once per ttl), so a
        # thread-pool hop per request would cost more than the work itself.
        async def identity(authorization: Annotated[str | None, Header()] = None) -> Identity:
            token = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else None
            who = tokens.lookup(token)
            if who is None:
                raise HTTPException(401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
            return who

        def role_in(*roles: str):
            async def check(who: Annotated[Identity, Depends(identity)]) -> Identity:
                if who.role not in roles:
                    needs = " or ".join(roles)
                    raise HTTPException(403, f"token {who.name!r} is a {who.role} token; this needs: {needs}")
                return who

            return check

        self.caller = role_in("admin", "viewer", "device")
        self.admin = role_in("admin")
        self.reader = role_in("admin", "viewer")
        self.enroller = role_in("admin", "enroll")


def require_device(who: Identity, device_id: object) -> None:
    """403 unless ``who`` may speak for ``device_id``."""
    if not who.speaks_for(device_id):
        raise HTTPException(403, f"token {who.name!r} speaks only for device {who.device_id!r}, not for {device_id!r}")
