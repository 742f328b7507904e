"""The registry HTTP service (FastAPI): releases, rollouts, assignments, telemetry, health, audit.

Stateless apart from the database and the blob store, so replicas can run side by side. Every
error is a 4xx with ``{"detail": ..., "hint": ...}``; a 5xx is a bug. The routes live in
:mod:`factory.registry.routes` (one router per resource); their SQL in the repository modules
(:mod:`~factory.registry.releases`, :mod:`~factory.registry.rollouts`, :mod:`~factory.registry.ingest`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import BundleError, ConfigError, FactoryError, InputError, SignatureError
from . import db
from . import rollouts as ro
from .auth import EnrolmentSpent, TokenCache
from .limits import BodyLimit
from .monitoring import Metrics
from .routes import captures, fleet, history, ops, releases, rollouts, telemetry
from .services import Services
from .settings import check_settings, load_settings
from .state import StateCache
from .storage import BlobStore

__all__ = ["create_app"]

DB_RETRY_SECONDS = 5
DISK_RETRY_SECONDS = 30


def _status_for(exc: FactoryError) -> int:
    if isinstance(exc, ro.NotFound):
        return 404
    if isinstance(exc, ro.RolloutConflict):
        return 409
    if isinstance(exc, EnrolmentSpent):
        return 403
    # Bad bundles, plans and summaries are well-formed HTTP with content we refuse: 422, like
    # FastAPI's own validation errors, so clients handle one status for "fix your input".
    return 422 if isinstance(exc, (BundleError, SignatureError, ConfigError, InputError)) else 500


def _unavailable(detail: str, retry_after: int, hint: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "hint": hint}, status_code=503, headers={"Retry-After": str(retry_after)})


def _unavailable_handlers() -> dict:
    """Faults of what the registry stands on are 503 with Retry-After, never a 500: the database unreachable
    (a lost connection, a refused one, a pool that cannot get one) and a blob store that is full or failing.
    Nothing was committed; a client retries the same request (telemetry and captures carry idempotency keys,
    releases are content-addressed). Anything else is re-raised: a 500 is a bug."""
    import errno

    import sqlalchemy.exc as sa_exc

    async def database(_request, exc):
        return _unavailable(
            "the registry's database is unreachable; nothing was stored",
            DB_RETRY_SECONDS,
            "retry after the Retry-After seconds; operators: check the database server",
        )

    async def storage(_request, exc: OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _unavailable(
                "the registry's blob store is full; nothing was stored",
                DISK_RETRY_SECONDS,
                "retry later; operators: free space in the blob store",
            )
        if exc.errno in (errno.EIO, errno.EROFS) or isinstance(exc, (ConnectionError, TimeoutError)):
            return _unavailable(
                f"the registry's blob store failed ({exc.strerror or exc}); nothing was stored",
                DB_RETRY_SECONDS,
                "retry later",
            )
        raise exc

    return {
        sa_exc.OperationalError: database,
        sa_exc.InterfaceError: database,
        sa_exc.TimeoutError: database,
        sa_exc.DisconnectionError: database,
        OSError: storage,
    }


def _trusted_keys(paths: list[str]):
    from ..bundle.signing import load_public_key

    return [load_public_key(p) for p in paths if Path(p).is_file()]


def _clean_dead_uploads(folder: Path) -> None:
    """Partial uploads of a registry process that died (kill -9) are never visible; remove them."""
    for d in folder.glob("factory-registry-uploads-*"):
        try:
            os.kill(int(d.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _body_limits(settings: dict):
    upload, json_bytes = settings["max_upload_mb"] << 20, settings["max_json_bytes"]
    batch = settings["telemetry"]["max_batch_bytes"]

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path == "/v1/releases":
            return upload
        if path == "/v1/telemetry/batch":
            return batch
        if method == "POST" and path == "/v1/captures":
            return captures.MAX_BODY
        return json_bytes

    return limit_for


def _services(settings: dict) -> Services:
    engine = db.engine_for(settings["database"])
    store = BlobStore(settings["storage"])
    store.clean_tmp()
    uploads = Path(tempfile.gettempdir()) / f"factory-registry-uploads-{os.getpid()}"
    _clean_dead_uploads(uploads.parent)
    uploads.mkdir(exist_ok=True)
    svc = Services(
        settings=settings,
        engine=engine,
        store=store,
        states=StateCache(engine, settings["public_url"], settings["cache_seconds"]),
        tokens=TokenCache(engine),
        keys=_trusted_keys(settings["trusted_keys"]),
        uploads=uploads,
    )
    svc.hooks["stop"].append(lambda: shutil.rmtree(uploads, ignore_errors=True))
    return svc


def create_app(settings: dict | None = None) -> FastAPI:
    """The registry app for ``settings`` (default: :func:`~factory.registry.settings.load_settings`)."""
    svc = _services(check_settings(settings) if settings is not None else load_settings())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        for fn in svc.hooks["start"]:
            fn()
        yield
        for fn in svc.hooks["stop"]:
            fn()

    app = FastAPI(
        title="Edge model factory registry",
        version=__version__,
        lifespan=lifespan,
        description="Signed bundles, staged rollouts and device assignments. Admin tokens publish and "
        "manage rollouts; device tokens pull and report.",
    )
    app.state.engine, app.state.store, app.state.states, app.state.settings = (
        svc.engine,
        svc.store,
        svc.states,
        svc.settings,
    )

    @app.exception_handler(FactoryError)
    async def _factory_error(_request, exc: FactoryError):
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=_status_for(exc))

    for exc_type, handler in _unavailable_handlers().items():
        app.add_exception_handler(exc_type, handler)

    app.add_middleware(BodyLimit, limit_for=_body_limits(svc.settings))
    metrics = Metrics()
    tele_router, evaluate = telemetry.router(svc, metrics)
    routers = (ops.router(svc, metrics), releases.router(svc), rollouts.router(svc), fleet.router(svc), tele_router)
    for api in (*routers, captures.router(svc), history.router(svc)):
        app.include_router(api)
    ops.start_evaluator(svc, evaluate)
    return app
