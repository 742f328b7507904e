"""Where a build's work runs: in a worker process (the default), in this process, or as Ray tasks.

``process`` (the default of ``factory build``): each target build (and each search candidate) runs in a
spawned worker process, reused from one task to the next, so a native crash in a converter or runtime
(a SIGSEGV in a quantizer, an abort in a compiler) ends that worker, not the command: the task becomes
a failed row naming the signal and the stage it was in, a fresh worker takes the next task, and the
staging folder the dead one wrote into is removed. ``local`` runs everything in this process (what the
test suite does, and code that registers architectures or backends in-process must use).

``--executor ray`` (or ``FACTORY_RAY_ADDRESS`` in the environment) sends each candidate build to a
Ray worker and, when the target profile names a ``device_class``, the search's interleaved benchmark
to a node that carries the custom resource ``device:<class>`` (a board of that class that joined the
cluster). The results are the same either way: the same cache keys, the same manifests, the same
winner, because a worker runs exactly what this process would (``_build_one``) against the same
cache.

The shared store is the search cache folder, content-addressed by the candidate's key (a hash of
the canonical weights, the resolved recipe and the toolchain): on several machines it must be a shared
filesystem (NFS, a cloud file share) mounted at the same path. Not Ray's object store: bundles are
folders that later steps (the benchmark, publishing, devices) open by path, and the cache must outlive
the cluster so a repeated search rebuilds nothing. Ray stays optional (``edge-model-factory[ray]``);
nothing else in the factory imports it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import progress
from ..errors import InputError, MissingDependencyError

__all__ = [
    "Outcome",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "get_executor",
    "absolute",
    "RAY_ADDRESS_ENV",
    "EXECUTOR_ENV",
]

RAY_ADDRESS_ENV = "FACTORY_RAY_ADDRESS"
EXECUTOR_ENV = "FACTORY_EXECUTOR"  # local | process | ray: the default when --executor is not given
CRASH_HINT = (
    "a native crash in the converter or runtime; the other targets were built. Rerun this target alone with "
    "`factory --debug build --executor local ...` under gdb or with PYTHONFAULTHANDLER=1 for its stack"
)


@dataclass
class Outcome:
    """One task's result, or the error that ended it (a failure is data: the search records it)."""

    value: Any = None
    error: str | None = None
    node: dict | None = None  # where it ran (Ray: node id and host facts)
    stage: str | None = None  # the build stage a worker process died in
    hint: str | None = None


def absolute(path) -> str | None:
    """A path every node can open the same way (workers do not share this process's working folder)."""
    return str(Path(path).resolve()) if path else None


def _facts() -> dict:
    from ..lineage import host_info

    out = {"host": host_info()}
    try:
        import ray

        out["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    return out


class LocalExecutor:
    """Everything in this process: the search runs its own loop (with its time budget and progress bar)."""

    name = "local"

    def close(self) -> None:
        pass


def _serve(conn) -> None:
    """A worker process: run each ``(fn, args)`` it is sent, report stages as they start, answer once per task."""
    import faulthandler

    from ..export.base import STAGE_LISTENERS

    faulthandler.enable()  # a crash prints its Python stack to stderr before the process dies
    STAGE_LISTENERS.append(lambda name: conn.send(("stage", name)))
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:  # the parent is gone
            return
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - the parent records it as the task's failure
            from ..errors import FactoryError

            if isinstance(exc, FactoryError) and exc.exit_code == 2:
                conn.send(("input-error", (exc.message, exc.hint)))  # the command's error, raised there as here
                continue
            text = str(exc).strip().splitlines()
            conn.send(("error", f"{type(exc).__name__}: {text[0][:300] if text else ''}"))


def _signal_name(code: int | None) -> str:
    import signal

    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class ProcessExecutor:
    """Each task in a spawned worker process (one at a time: a build probes its latency on the cores it has);
    the worker is reused until one dies, and a task is never waited for longer than ``task_seconds``
    (``FACTORY_TASK_SECONDS``, default 3 h)."""

    name = "process"

    def __init__(self, task_seconds: float | None = None):
        self.task_seconds = task_seconds or float(os.environ.get("FACTORY_TASK_SECONDS", "10800"))
        self._proc = self._conn = None
        self.spawned = 0

    def largest_node_cpus(self) -> float:
        """This machine's cores (a worker builds one target at a time)."""
        return float(os.cpu_count() or 1)

    def _start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # never fork a process that holds runtime threads
        self._conn, child = ctx.Pipe()
        # a daemon: it ends with the command whatever happens (builds start no processes of their own: the
        # pruning fine-tune loads data in-process)
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="factory-build-worker")
        self._proc.start()
        child.close()
        self.spawned += 1

    def _one(self, fn, args) -> Outcome:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send((fn, args))
        current, deadline = None, time.monotonic() + self.task_seconds
        while True:
            try:
                if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                    self._kill()
                    return Outcome(
                        error=f"no answer within {self.task_seconds:g} s (the worker was stopped)", stage=current
                    )
                kind, payload = self._conn.recv()
            except (EOFError, ConnectionError):
                self._proc.join(10)
                code = self._proc.exitcode
                self._proc = self._conn = None
                where = f" in stage {current}" if current else ""
                return Outcome(
                    error=f"the worker process died of {_signal_name(code)}{where}",
                    stage=current or "worker",
                    hint=CRASH_HINT,
                )
            if kind == "stage":
                current = payload
            elif kind == "ok":
                return Outcome(payload, node={"host": "this machine", "worker_pid": self._proc.pid})
            elif kind == "input-error":
                raise InputError(payload[0], hint=payload[1])
            else:
                return Outcome(error=payload, stage=current)

    def map(
        self, fn: Callable, items: list[tuple], *, resources: dict | None = None, what: str = "task", cpus: float = 1
    ) -> list[Outcome]:
        """Run ``fn(*args)`` for each item, one after the other, in the worker."""
        out = [self._one(fn, args) for args in items]
        died = sum(o.hint == CRASH_HINT for o in out)
        if died:
            progress.info(f"{died} {what}(s) ended in a crashed worker process; the others went on")
        return out

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(10)
        self._proc = self._conn = None

    def close(self) -> None:
        """Stop the worker (it exits when its pipe closes)."""
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = self._conn = None


def _run_with_facts(fn, *args):
    return fn(*args), _facts()


class RayExecutor:
    """Tasks on a Ray cluster (``address``: ``host:port`` of its head, or None for ``auto``). A task that
    raises, or whose node dies, becomes a failed :class:`Outcome` after ``retries`` retries; a task that
    cannot be placed (no node has the resource it asks for) fails after ``place_seconds``, and none is
    waited for longer than ``task_seconds`` (``FACTORY_RAY_PLACE_SECONDS``, ``FACTORY_RAY_TASK_SECONDS``)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        retries: int = 1,
        place_seconds: float | None = None,
        task_seconds: float | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("ray", "ray", "the ray executor") from None
        self.ray, self.retries = ray, retries
        env = os.environ.get
        self.place_seconds = place_seconds or float(env("FACTORY_RAY_PLACE_SECONDS", "120"))
        self.task_seconds = task_seconds or float(env("FACTORY_RAY_TASK_SECONDS", "3600"))  # never wait for ever
        if not ray.is_initialized():
            host = (address or "").rsplit(":", 1)[0]
            # a cluster on loopback: this driver must say it is there too, or Ray looks for the head at the
            # host's own address (where nothing listens)
            local = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
            try:
                ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False, **local)
            except (ConnectionError, RuntimeError) as exc:
                raise InputError(
                    f"cannot join the Ray cluster at {address or 'auto'}: {str(exc).splitlines()[0][:300]}",
                    hint="start it (ray start --head) or pass its head as --ray-address HOST:PORT; with token "
                    "authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN before running the factory",
                ) from None
        self._remote = ray.remote(max_retries=retries, retry_exceptions=False)(_run_with_facts)

    def nodes(self, resource: str | None = None) -> list[dict]:
        """Live nodes (with ``resource``, only those that carry it)."""
        return [
            n for n in self.ray.nodes() if n.get("Alive") and (resource is None or resource in n.get("Resources", {}))
        ]

    def largest_node_cpus(self) -> float:
        """The most CPUs one live node has (a task asking for more could never be placed)."""
        return max((n.get("Resources", {}).get("CPU", 1.0) for n in self.nodes()), default=1.0)

    def map(
        self, fn: Callable, items: list[tuple], *, resources: dict | None = None, what: str = "task", cpus: float = 1
    ) -> list[Outcome]:
        ray = self.ray
        for name in resources or {}:
            deadline = time.monotonic() + self.place_seconds
            while not self.nodes(name):
                if time.monotonic() > deadline:
                    return [
                        Outcome(error=f"no live node of the cluster carries {name}: the {what} was not run")
                        for _ in items
                    ]
                time.sleep(1.0)
        opts = {"num_cpus": cpus} | ({"resources": resources} if resources else {})
        refs = [self._remote.options(**opts).remote(fn, *args) for args in items]
        out: list[Outcome] = []
        deadline = time.monotonic() + self.task_seconds
        for ref in refs:
            try:
                value, node = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
                out.append(Outcome(value, node=node))
            except Exception as exc:  # noqa: BLE001 - a task error, its node died (after the retries), a timeout
                if isinstance(exc, ray.exceptions.GetTimeoutError):
                    ray.cancel(ref, force=True)
                text = str(exc).strip().splitlines()
                out.append(Outcome(error=f"{type(exc).__name__}: {text[-1][:300] if text else ''}"))
        progress.info(f"ray: {sum(o.error is None for o in out)} of {len(out)} {what}(s) done on the cluster")
        return out

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


def get_executor(name: str | None, address: str | None = None):
    """``process`` (default), ``local``, or ``ray`` (the default when ``FACTORY_RAY_ADDRESS`` is set);
    ``FACTORY_EXECUTOR`` names the default otherwise."""
    address = address or os.environ.get(RAY_ADDRESS_ENV)
    name = name or ("ray" if address else os.environ.get(EXECUTOR_ENV) or "process")
    if name == "local":
        return LocalExecutor()
    if name == "process":
        return ProcessExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise InputError(f"unknown executor {name!r}; use process, local or ray")
