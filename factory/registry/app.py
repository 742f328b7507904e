"""The registry HTTP service (FastAPI): releases, rollouts, assignments, audit.

Stateless apart from the database and the blob store, so replicas can run side by side. Every
error is a 4xx with ``{"detail": ..., "hint": ...}``; a 5xx is a bug.
"""


import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ..errors import BundleError, ConfigError, FactoryError, InputError, SignatureError
from . import db
from . import rollouts as ro
from .assign import assign
from .auth import TokenCache
from .settings import load_settings
from .state import StateCache, sign_state
from .storage import BlobStore

__all__ = ["create_app"]

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
DEVICE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
TAGS = r"^[A-Za-z0-9._:=,-]{0,1000}$"
Name = Annotated[str, PathParam(pattern=NAME)]
ACTIONS = ("advance", "pause", "resume", "rollback")


def _status_for(exc: FactoryError) -> int:
    if isinstance(exc, ro.NotFound):
        return 404
    if isinstance(exc, ro.RolloutConflict):
        return 409
    # Bad bundles, plans and summaries are well-formed HTTP with content we refuse: 422, like
    # FastAPI's own validation errors, so clients handle one status for "fix your input".
    return 422 if isinstance(exc, (BundleError, SignatureError, ConfigError, InputError)) else 500


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


def create_app(settings: dict | None = None) -> FastAPI:
    settings = settings or load_settings()
    engine = db.engine_for(settings["database"])
    store = BlobStore(settings["storage"])
    store.clean_tmp()
    uploads = Path(tempfile.gettempdir()) / f"factory-registry-uploads-{os.getpid()}"
    _clean_dead_uploads(uploads.parent)
    uploads.mkdir(exist_ok=True)
    tokens = TokenCache(engine)
    states = StateCache(engine, settings["public_url"], settings["cache_seconds"])
    keys = _trusted_keys(settings["trusted_keys"])
    hooks: dict[str, list] = {"start": [], "stop": [lambda: shutil.rmtree(uploads, ignore_errors=True)]}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        for fn in hooks["start"]:
            fn()
        yield
        for fn in hooks["stop"]:
            fn()

    app = FastAPI(title="Edge model factory registry", version=__version__, lifespan=lifespan,
                  description="Signed bundles, staged rollouts and device assignments. Admin tokens publish and "
                              "manage rollouts; device tokens pull and report.")
    app.state.engine, app.state.store, app.state.states, app.state.settings = engine, store, states, settings

    @app.exception_handler(FactoryError)
    async def _factory_error(_request, exc: FactoryError):
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=_status_for(exc))

    # caller, admin and assignment are async: they read in-memory caches (a database read at most
    # once per cache ttl), so a thread-pool hop per request would cost more than the work itself.
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

    @app.get("/healthz")
    def healthz() -> dict:
        with engine.connect() as conn:
            return {"status": "ok", "version": __version__, "state_version": db.state_version(conn)}

    @app.get("/v1/releases")
    def list_releases(who: Annotated[tuple, Depends(caller)], name: Annotated[str | None, Query(pattern=NAME)] = None) -> list[dict]:
        q = sa.select(db.releases.c.name, db.releases.c.version, db.releases.c.target, db.releases.c.sha256, db.releases.c.size,
                      db.releases.c.published_at).order_by(db.releases.c.id)
        if name:
            q = q.where(db.releases.c.name == name)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q).all()]

    def _release(conn, name, version, target):
        r = conn.execute(sa.select(db.releases).where(db.releases.c.name == name, db.releases.c.version == version,
                                                      db.releases.c.target == target)).first()
        if r is None:
            raise ro.NotFound(f"no release {name} {version} for target {target}")
        return r

    @app.get("/v1/releases/{name}/{version}/{target}")
    def inspect_release(name: Name, version: Name, target: Name, who: Annotated[tuple, Depends(caller)]) -> dict:
        with engine.connect() as conn:
            r = _release(conn, name, version, target)
        return {"name": r.name, "version": r.version, "target": r.target, "sha256": r.sha256, "size": r.size,
                "published_at": r.published_at, "published_by": r.published_by, "manifest": json.loads(r.manifest)}

    @app.get("/v1/releases/{name}/{version}/{target}/bundle", operation_id="download_bundle")
    @app.head("/v1/releases/{name}/{version}/{target}/bundle", operation_id="head_bundle")
    def download(name: Name, version: Name, target: Name, who: Annotated[tuple, Depends(caller)],
                 range_: Annotated[str | None, Header(alias="range")] = None,
                 if_none_match: Annotated[str | None, Header()] = None) -> Response:
        with engine.connect() as conn:
            r = _release(conn, name, version, target)
        etag = f'"{r.sha256}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable",
                   "Content-Type": "application/gzip"}
        if if_none_match and etag in [t.strip() for t in if_none_match.split(",")] + (['"*"'] if if_none_match.strip() == "*" else []):
            return Response(status_code=304, headers={"ETag": etag})
        size = int(r.size)
        if range_:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_.strip())
            if not m or (m[1] == "" and m[2] == ""):
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            if m[1] == "":
                start, end = max(0, size - int(m[2])), size - 1
            else:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            if start >= size or start > end:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            headers |= {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
            return StreamingResponse(store.iter_range(r.storage_key, start, end), status_code=206, headers=headers)
        headers["Content-Length"] = str(size)
        return StreamingResponse(store.iter_range(r.storage_key), headers=headers)

    def _verify_and_store(path: Path, actor: str, allow_failed: bool) -> dict:
        from .._io import sha256_file
        from ..bundle.archive import unpack, verify_bundle

        if not keys:
            raise SignatureError("the registry has no trusted public keys configured", hint="set trusted_keys in the registry config")
        with tempfile.TemporaryDirectory(dir=uploads) as tmp:
            folder = unpack(path, Path(tmp) / "bundle")
            errors = []
            for k in keys:
                try:
                    manifest = verify_bundle(folder, k)["manifest"]
                    break
                except SignatureError as exc:
                    errors.append(exc.message)
            else:
                raise SignatureError("the bundle is not signed by a trusted key: " + "; ".join(errors))
        if not manifest["validation"]["passed"] and not (allow_failed or settings["allow_failed_bundles"]):
            raise InputError("the bundle failed its own budgets (validation.passed: false); not publishing it",
                             hint="rebuild within budget, or publish with allow_failed=true")
        sha = sha256_file(path)
        key = store.key_for(sha)
        store.put_file(path, key)  # the blob lands before the row: no row ever points at a missing blob
        name, version, target = manifest["name"], manifest["version"], manifest["target"]
        with engine.begin() as conn:
            old = conn.execute(sa.select(db.releases.c.sha256).where(db.releases.c.name == name, db.releases.c.version == version,
                                                                     db.releases.c.target == target)).first()
            if old is not None:
                if old.sha256 == sha:
                    return {"name": name, "version": version, "target": target, "sha256": sha, "created": False}
                raise ro.RolloutConflict(f"release {name} {version} {target} already exists with other content",
                                         hint="releases are immutable; publish a new version")
            conn.execute(db.releases.insert().values(name=name, version=version, target=target, sha256=sha, size=path.stat().st_size,
                                                     storage_key=key, manifest=db.dumps(manifest), published_at=db.now(), published_by=actor))
            db.add_audit(conn, actor, "release.publish", None, {"release": f"{name}/{version}/{target}", "sha256": sha})
            db.bump_state(conn)
        return {"name": name, "version": version, "target": target, "sha256": sha, "created": True}

    @app.post("/v1/releases", status_code=201, openapi_extra={"requestBody": {
        "required": True, "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}})
    async def publish(request: Request, actor: Annotated[str, Depends(admin)], allow_failed: bool = False) -> dict:
        limit = settings["max_upload_mb"] * (1 << 20)
        fd, tmp = tempfile.mkstemp(dir=uploads, suffix=".tar.gz")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"upload larger than {settings['max_upload_mb']} MB")
                    f.write(chunk)
            if size == 0:
                raise HTTPException(422, "empty body; send the bundle archive (.tar.gz) as the request body")
            return await run_in_threadpool(_verify_and_store, Path(tmp), actor, allow_failed)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @app.post("/v1/rollouts", status_code=201)
    def create_rollout(plan: Annotated[dict, Body()], actor: Annotated[str, Depends(admin)]) -> dict:
        with engine.begin() as conn:
            return ro.create(conn, plan, actor)

    @app.get("/v1/rollouts")
    def list_rollouts(who: Annotated[tuple, Depends(caller)]) -> list[dict]:
        with engine.connect() as conn:
            names = [r.name for r in conn.execute(sa.select(db.rollouts.c.name).order_by(db.rollouts.c.id)).all()]
            return [ro.get(conn, n) for n in names]

    @app.get("/v1/rollouts/{name}")
    def rollout_status(name: Name, who: Annotated[tuple, Depends(caller)]) -> dict:
        with engine.connect() as conn:
            out = ro.get(conn, name)
            out["audit"] = _audit(conn, name, 50)
        return out

    @app.post("/v1/rollouts/{name}/{action}")
    def rollout_action(name: Name, action: Annotated[str, PathParam(pattern="^(advance|pause|resume|rollback)$")],
                       actor: Annotated[str, Depends(admin)], body: Annotated[dict | None, Body()] = None) -> dict:
        reason = str((body or {}).get("reason", ""))[:1000]
        with engine.begin() as conn:
            return ro.transition(conn, name, action, actor, reason)

    def _audit(conn, rollout: str | None, limit: int) -> list[dict]:
        q = sa.select(db.audit).order_by(db.audit.c.id.desc()).limit(limit)
        if rollout:
            q = q.where(db.audit.c.rollout == rollout)
        return [{"id": r.id, "ts": r.ts, "actor": r.actor, "action": r.action, "rollout": r.rollout, "detail": json.loads(r.detail)}
                for r in reversed(conn.execute(q).all())]

    @app.get("/v1/audit")
    def audit_log(actor: Annotated[str, Depends(admin)], rollout: Annotated[str | None, Query(pattern=NAME)] = None,
                  limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict]:
        with engine.connect() as conn:
            return _audit(conn, rollout, limit)

    @app.get("/v1/assignment")
    async def assignment(who: Annotated[tuple, Depends(caller)], model: Annotated[str, Query(pattern=NAME)],
                   device_id: Annotated[str, Query(pattern=DEVICE)], target: Annotated[str, Query(pattern=NAME)],
                   tags: Annotated[str, Query(pattern=TAGS)] = "",
                   if_none_match: Annotated[str | None, Header()] = None) -> Response:
        state = states.get()
        result = assign(state, model, device_id, target, [t for t in tags.split(",") if t])
        body = json.dumps(result.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=30", "X-Fleet-State": str(state["sequence"])}
        if if_none_match == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    @app.get("/v1/fleet-manifest")
    def fleet_manifest(who: Annotated[tuple, Depends(caller)]) -> dict:
        from ..bundle.signing import load_private_key

        if not Path(settings["fleet_key"]).is_file():
            raise ro.NotFound("this registry has no fleet key to sign static manifests with",
                              hint="create one (factory keys generate --out keys/fleet) and set fleet_key")
        return sign_state(states.get(), load_private_key(settings["fleet_key"]))

    _telemetry_routes(app, engine, settings, caller, admin, hooks)
    return app


def _telemetry_routes(app: FastAPI, engine, settings: dict, caller, admin, hooks: dict) -> None:
    """Devices, telemetry, evaluation, health, metrics and the status page."""
    import threading
    import time as _time

    from fastapi.responses import HTMLResponse

    from ..monitor.health import evaluate_rollouts
    from .ingest import Ingestor, register_device
    from .monitoring import Metrics, check_retraining, health_report
    from .status_page import PAGE

    tele = settings["telemetry"]
    ingestor = Ingestor(engine, tele["max_summary_bytes"])
    metrics = Metrics()
    lock = threading.Lock()

    def evaluate() -> dict:
        with lock:  # one evaluation at a time per process; transitions are guarded by status checks in SQL
            now = _time.time()
            decisions = evaluate_rollouts(engine, tele["window_seconds"], now)
            triggers = check_retraining(engine, tele["window_seconds"], now, windows=tele.get("retrain_windows", 3),
                                        max_psi=tele.get("retrain_max_psi", 0.25), max_js=tele.get("retrain_max_js", 0.1))
        app.state.states.invalidate()
        return {"decisions": decisions, "triggers": triggers}

    @app.post("/v1/devices", status_code=201)
    def register(who: Annotated[tuple, Depends(caller)], body: Annotated[dict, Body()]) -> dict:
        device_id, target, tags = body.get("device_id"), body.get("target"), body.get("tags", [])
        if not isinstance(device_id, str) or not re.fullmatch(DEVICE, device_id) or not isinstance(target, str) \
                or not re.fullmatch(NAME, target) or not isinstance(tags, list) or len(tags) > 50 \
                or not all(isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9._:=-]{1,100}", t) for t in tags):
            raise InputError("a device is {device_id, target, tags: [...]} with ids of [A-Za-z0-9._:-]")
        with engine.begin() as conn:
            out = register_device(conn, device_id, target, tags)
        ingestor.forget_device(device_id)
        return out

    @app.post("/v1/telemetry", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
    async def telemetry(request: Request, who: Annotated[tuple, Depends(caller)]) -> dict:
        raw = await request.body()
        if len(raw) > tele["max_summary_bytes"]:
            metrics.telemetry.labels("rejected").inc()
            raise HTTPException(413, f"summary larger than {tele['max_summary_bytes']} bytes")
        try:
            summary = json.loads(raw)
        except ValueError:
            metrics.telemetry.labels("rejected").inc()
            raise HTTPException(422, "body is not JSON") from None
        try:
            result = (await run_in_threadpool(ingestor.ingest, [summary], single=True))[0]
        except InputError:
            metrics.telemetry.labels("rejected").inc()
            raise
        metrics.telemetry.labels("accepted").inc()
        return result

    @app.post("/v1/telemetry/batch", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
    async def telemetry_batch(request: Request, who: Annotated[tuple, Depends(caller)]) -> dict:
        raw = await request.body()
        if len(raw) > tele["max_summary_bytes"] * 1000:
            raise HTTPException(413, "batch too large; send at most 1000 summaries at a time")
        try:
            body = json.loads(raw)
        except ValueError:
            raise HTTPException(422, "body is not JSON") from None
        items = body.get("summaries") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 0 < len(items) <= 1000:
            raise HTTPException(422, "send {\"summaries\": [...]} with 1 to 1000 summaries")
        results = await run_in_threadpool(ingestor.ingest, items)
        for r in results:
            metrics.telemetry.labels(r["status"]).inc()
        return {"results": results, "accepted": sum(r["status"] == "accepted" for r in results)}

    @app.post("/v1/evaluate")
    def evaluate_now(actor: Annotated[str, Depends(admin)]) -> dict:
        return evaluate()

    @app.get("/v1/health")
    def health() -> dict:
        report = health_report(engine, tele["window_seconds"])
        metrics.update(report)
        return report

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.update(health_report(engine, tele["window_seconds"]))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/status", response_class=HTMLResponse)
    def status_page() -> str:
        return PAGE

    if tele["evaluate_seconds"] > 0:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(tele["evaluate_seconds"]):
                try:
                    evaluate()
                except Exception:  # keep evaluating; a transient database error must not kill the loop
                    import logging

                    logging.getLogger("factory.registry").exception("health evaluation failed")

        hooks["start"].append(lambda: threading.Thread(target=loop, name="health-evaluator", daemon=True).start())
        hooks["stop"].append(stop.set)
