"""Request bodies bounded while they are read, before any work is done on them.

A pure ASGI middleware: a ``Content-Length`` over the route's limit is answered 413 at once; a body
without one (chunked) is counted as it streams in and cut off with 413 the moment it passes the
limit, so no handler ever buffers more than the limit. Bundle uploads have their own (large) limit;
every JSON endpoint a small one. :func:`parse_json` is how the routes that read their own body parse
it: a body nested too deep, or one that smuggles ``NaN``/``Infinity`` (which Python's parser accepts
and no JSON client can read back), is a 422, never a 500 and never stored.
"""

from __future__ import annotations

import json
import math

from starlette.exceptions import HTTPException

from ..errors import InputError

__all__ = ["BodyLimit", "parse_json", "check_depth", "MAX_DEPTH"]

MAX_DEPTH = 32  # nesting of free-form JSON the registry stores and serves back (a model's output, audit details)


def _not_a_number(constant: str):
    raise InputError(
        f"the body holds {constant}, which is not JSON",
        hint="send finite numbers (or null for a missing value); nothing was stored",
    )


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        _not_a_number(text)
    return value


def parse_json(raw: bytes, what: str = "body"):
    """``raw`` parsed as strict JSON; InputError (422) for invalid JSON, NaN/Infinity or nesting past the parser."""
    try:
        return json.loads(raw, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:  # "[[[[..." : the parser gives up past Python's recursion limit
        raise InputError(f"{what} nests arrays or objects too deeply", hint="send a flat JSON document") from None
    except ValueError:
        raise InputError(f"{what} is not JSON", hint="send a JSON document") from None


def check_depth(obj, what: str, limit: int = MAX_DEPTH) -> None:
    """InputError unless ``obj`` nests lists and objects at most ``limit`` deep. Free-form JSON that is stored
    and served back must be: the response serializer gives up past a few hundred levels (a 500 on every later
    listing, for everyone), so a deep value is refused on the way in."""
    level, depth = [obj], 0
    while level:
        depth += 1
        if depth > limit:
            raise InputError(f"{what} nests lists and objects more than {limit} deep", hint="send a flatter value")
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())]
        level = [v for v in level if isinstance(v, (dict, list))]


class BodyLimit:
    """Wraps an ASGI app; ``limit_for(method, path)`` gives the byte limit of a request's body."""

    def __init__(self, app, limit_for):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["method"], scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _reject(send, limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # raised inside the handler's read: FastAPI answers it as a 413
                    raise HTTPException(413, f"request body larger than {limit} bytes; send less at a time")
            return message

        await self.app(scope, counted, send)


async def _reject(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes", "hint": "send less at a time"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
