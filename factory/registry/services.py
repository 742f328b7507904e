"""What every route of the registry shares: settings, database, blob store, caches, and auth."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, HTTPException
from fastapi import Path as PathParam

__all__ = ["NAME", "DEVICE", "TAGS", "Name", "Services", "Caller", "Admin"]

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

    def auth(self):
        """(caller, admin) dependencies: any valid token, and an admin token."""
        tokens = self.tokens

        # async: they read an in-memory cache (a database read at most once per ttl), so a
        # thread-pool hop per request would cost more than the work itself.
        async def caller(authorization: Annotated[str | None, Header()] = None) -> tuple[str, str]:
            token = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else None
            who = tokens.lookup(token)
            if who is None:
                raise HTTPException(401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
            return who

        async def admin(who: Annotated[tuple[str, str], Depends(caller)]) -> str:
            if who[0] != "admin":
                raise HTTPException(403, f"token {who[1]!r} is a {who[0]} token; this needs an admin token")
            return who[1]

        return caller, admin


Caller = tuple[str, str]
Admin = str
