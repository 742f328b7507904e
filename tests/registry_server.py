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
    def __init__(self, settings: dict, port: int | None = None):
        self.settings, self.port = settings, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = os.environ | {"FACTORY_REGISTRY_SETTINGS": json.dumps(self.settings)}
        # the server's log goes to a file (a pipe nobody reads would block the server once full)
        self.log = Path(self.settings["storage"]).parent / f"server-{self.port}.log"
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
