"""Where a search's work runs: in this process (the default) or as Ray tasks on a cluster.

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

__all__ = ["Outcome", "LocalExecutor", "RayExecutor", "get_executor", "absolute", "RAY_ADDRESS_ENV"]

RAY_ADDRESS_ENV = "FACTORY_RAY_ADDRESS"


@dataclass
class Outcome:
    """One task's result, or the error that ended it (a failure is data: the search records it)."""

    value: Any = None
    error: str | None = None
    node: dict | None = None  # where it ran (Ray: node id and host facts)


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


def _run_with_facts(fn, *args):
    return fn(*args), _facts()


class RayExecutor:
    """Tasks on a Ray cluster (``address``: ``host:port`` of its head, or None for ``auto``). A task that
    raises, or whose node dies, becomes a failed :class:`Outcome` after ``retries`` retries; a task that
    cannot be placed (no node has the resource it asks for) fails after ``place_seconds``, and none is
    waited for longer than ``task_seconds`` (``FACTORY_RAY_PLACE_SECONDS``, ``FACTORY_RAY_TASK_SECONDS``)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, retries: int = 1, place_seconds: float | None = None,
                 task_seconds: float | None = None):  # fmt: skip
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
                    return [Outcome(error=f"no live node of the cluster carries {name}: the {what} was not run")
                            for _ in items]  # fmt: skip
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
    """``local`` (default), or ``ray`` (also when ``FACTORY_RAY_ADDRESS`` is set and no name is given)."""
    address = address or os.environ.get(RAY_ADDRESS_ENV)
    name = name or ("ray" if address else "local")
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise InputError(f"unknown executor {name!r}; use local or ray")
