"""A real registry server on loopback for tests: uvicorn in a subprocess, killable with -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, settings: dict, port: int | None = None, env: dict | None = None, log_dir: Path | None = None):
        self.settings, self.port, self.env = settings, port or free_port(), env or {}
        # beside a local blob store by default; give log_dir when the store is a URL (s3://...)
        self.log_dir = log_dir or Path(settings["storage"]).parent
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = os.environ | self.env | {"FACTORY_REGISTRY_SETTINGS": json.dumps(self.settings)}
        # the server's log goes to a file (a pipe nobody reads would block the server once full)
        self.log = self.log_dir / f"server-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "factory.registry.serve:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry server exited: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("registry server did not come up")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


def make_settings(
    tmp: Path, db_url: str, trusted: list[str], fleet_key: str, public_url: str = "http://127.0.0.1"
) -> dict:
    from factory.registry.settings import default_settings

    return default_settings(
        database=db_url,
        storage=str(tmp / "blobs"),
        trusted_keys=trusted,
        fleet_key=fleet_key,
        public_url=public_url,
        cache_seconds=0.0,
    )


def start_registry(
    tmp: Path,
    trusted_pub: Path,
    telemetry: dict | None = None,
    devices: tuple[str, ...] = (),
    database: str | None = None,
):
    """A registry in ``tmp`` (SQLite unless ``database`` names another), started, its fleet key at
    ``tmp/fleet.key`` (``.pub``): (server, settings, engine, admin token, {device: its token})."""
    from factory.bundle.signing import generate_keys
    from factory.registry import db
    from factory.registry.auth import create_token

    fleet_key, _ = generate_keys(tmp / "fleet")
    settings = make_settings(tmp, database or f"sqlite:///{tmp / 'r.db'}", [str(trusted_pub)], str(fleet_key))
    if telemetry:
        settings["telemetry"] = settings["telemetry"] | telemetry
    srv = Server(settings)
    settings["public_url"] = srv.url
    srv.start()
    engine = db.engine_for(settings["database"])
    with engine.begin() as conn:
        admin = create_token(conn, "admin", "admin")
        tokens = {d: create_token(conn, f"device:{d}", "device", d) for d in devices}
    return srv, settings, engine, admin, tokens


class S3Server:
    """An S3-compatible object store speaking S3 over HTTP: ``$FACTORY_TEST_S3_ENDPOINT`` when set (what
    ``.ci/run`` starts), else moto's server started here. ``env`` holds what a client needs (AWS_* variables)."""

    def __init__(self, log_dir: Path):
        self.proc = None
        self.url = os.environ.get("FACTORY_TEST_S3_ENDPOINT")
        if not self.url:
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(log_dir / "moto.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(self.url, timeout=1)
                break
            except httpx.HTTPError:
                if time.time() > deadline or (self.proc and self.proc.poll() is not None):
                    raise RuntimeError(f"no S3 server at {self.url}") from None
                time.sleep(0.2)
        self.env = {
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "factory-test"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "factory-test"),
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
        }

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if needed); returns ``s3://name``."""
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class RoundRobin(httpx.HTTPTransport):
    """Replicas behind one address, as a load balancer with health checks serves them: each request goes to
    the next replica; one that refuses the connection (dead) is skipped for the next. A request already sent
    to a replica that dies is not retried here: it is in flight, and its client decides (idempotency keys)."""

    def __init__(self, urls: list[str]):
        super().__init__()
        self.urls = [httpx.URL(u) for u in urls]
        self.turn = 0
        self.sent = [0] * len(urls)
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(len(self.urls)):
            i = self.turn % len(self.urls)
            self.turn += 1
            target = self.urls[i]
            request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
            try:
                response = super().handle_request(request)
            except httpx.ConnectError:
                self.refused += 1
                continue
            self.sent[i] += 1
            return response
        raise httpx.ConnectError("every replica refused the connection", request=request)


def post_batches(url: str, token: str, batches: list[list[dict]], transport=None) -> dict:
    """Send telemetry batches in order, each until the registry answers 200 (same idempotency keys on a
    retry): what a gateway does. Returns requests sent, lost connections, 503s and per-status counts."""
    out = {"requests": 0, "lost": 0, "refused_503": 0, "accepted": 0, "duplicate": 0}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30, transport=transport) as c:
        for batch in batches:
            while True:
                out["requests"] += 1
                try:
                    r = c.post("/v1/telemetry/batch", json={"summaries": batch})
                except httpx.HTTPError:
                    out["lost"] += 1  # in flight when a replica died: send it again
                    time.sleep(0.1)
                    continue
                if r.status_code == 503:
                    out["refused_503"] += 1
                    time.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                r.raise_for_status()
                for res in r.json()["results"]:
                    out[res["status"]] = out.get(res["status"], 0) + 1
                break
    return out


def fake_bundle(folder, private_key, version, name="sr-model", target="cpu", payload=None):
    """A signed bundle folder whose model file is ``payload`` (random bytes by default): what the registry
    verifies (signature, file list, hashes) without a trained model, since it never loads one."""
    from factory.bundle.manifest import SCHEMA, Manifest, file_entries

    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(payload if payload is not None else os.urandom(256))
    m = Manifest(
        name=name,
        version=version,
        target=target,
        created_at="2026-01-01T00:00:00Z",
        runtime={"backend": "onnxruntime", "package": "onnxruntime", "min_version": "1.0", "options": {}},
        artifact={"main": "model.onnx", "precision": "fp32", "size_bytes": 256},
        files=file_entries(folder, ["model.onnx"]),
        input={"shape": [1, 3, 32, 32]},
        output={},
        preprocessing={"resize": [32, 32], "mean": [0, 0, 0], "std": [1, 1, 1]},
        labels=["a", "b"],
        recipe={"precision": "fp32", "pruning": {}},
        validation={"passed": True, "parity": {}, "checks": [], "budgets": {}},
        latency={"p50_ms": 1.0, "p95_ms": 2.0},
        lineage={},
        reference_profile={},
        schema=SCHEMA,
    )
    m.write_signed(folder, private_key)
    return folder


def archive(folder) -> bytes:
    """The bundle folder packed as the archive a publish sends."""
    from factory.bundle.archive import pack

    return pack(folder, folder.with_suffix(".tar.gz")).read_bytes()


def roll_out_and_run(srv, admin: str, device_token: str, bundle, *, device_id: str, target: str, state_dir,
                     trusted_pub, images, frames: int = 5):  # fmt: skip
    """Publish ``bundle``, roll it out to every device, and let one device agent pull, verify and run it on
    ``frames`` images, close its window and upload: (the agent's answers, what the upload returned)."""
    import itertools

    from factory.bundle.signing import load_public_key
    from factory.device.agent import Agent
    from factory.device.client import RegistryClient
    from factory.device.sources import frames as read_frames

    client = RegistryClient(srv.url, admin)
    version = client.publish(bundle)["version"]
    model = json.loads((Path(bundle) / "manifest.json").read_text())["name"]
    name = f"{model}-{version}-{target}"
    client.create_rollout({"name": name, "release": {"name": model, "version": version},
                           "stages": [{"percent": 100}]})  # fmt: skip
    client.act(name, "advance", "to every device")
    agent = Agent(
        RegistryClient(srv.url, device_token),
        model=model,
        device_id=device_id,
        target=target,
        tags=[],
        state_dir=state_dir,
        bundle_key=load_public_key(trusted_pub),
        window_seconds=3600,
    )
    assert agent.sync().startswith("switched") and agent.release_key.endswith(f"/{target}")
    answers = [agent.infer(f) for f in itertools.islice(read_frames(str(images)), frames)]
    agent.close_window()
    return answers, agent.upload()
