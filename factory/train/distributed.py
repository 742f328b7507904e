"""``factory train --workers N [--nodes M --rendezvous HOST:PORT]``: data-parallel training (PyTorch DDP)
in N processes on each of M machines.

Launcher: torchrun's engine (``torch.distributed.elastic``), called as a library. Not Ray Train: the
factory's core never imports Ray (it is an optional extra), torchrun ships with PyTorch, and Ray Train's
``TorchTrainer`` would set up the very same ``DistributedDataParallel`` process group underneath.
Backend: gloo (the factory trains on CPU; NCCL needs CUDA devices, which this build does not use).

What makes N processes train the model one process would:

* every rank draws the same **global** batches (one seeded permutation per epoch, :func:`epoch_batches`)
  and takes its own slice of each; augmentation is seeded per (seed, epoch, image), so an image is
  augmented the same on whichever rank it lands;
* each rank's loss is scaled by ``N * local / global`` so DDP's gradient average is the mean over the
  global batch, whatever the split (exactly for a mean over images; a loss divided by the objects in
  the slice, like the detector's, averages close to the global one, not exactly);
* rank 0 alone validates, keeps the best epoch, logs to MLflow and writes the model directory; the
  others follow its decision to stop.

BatchNorm statistics are per rank (PyTorch's SyncBatchNorm needs CUDA), and dropout masks differ, so
N workers are not bit-identical to one; a given seed and world size reproduce themselves exactly (on
one machine or several: the arithmetic depends on the ranks, not on where they run).

On several machines every node runs the same command with the same config (the dataset at the same
path); torchrun's c10d rendezvous at ``distributed.rendezvous`` gathers them (the node at its HOST
serves it), and the node that holds rank 0 writes the model directory and the MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..errors import ConfigError, FactoryError, InputError

__all__ = ["Ranks", "SINGLE", "epoch_batches", "world_size", "check_layout", "launch"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training workers (``world`` 1: no process group at all)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1  # the ranks on this machine (they share its cores)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """The module to train: ``model`` itself, or its DDP wrapper (gradients averaged over the ranks)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def part(self, batch: list[int]) -> list[int]:
        """This rank's slice of a global batch (sizes differ by at most one)."""
        n, k = len(batch), self.world
        lo, hi = self.rank * n // k, (self.rank + 1) * n // k
        return batch[lo:hi]

    def scale(self, batch: list[int]) -> float:
        """The loss factor that makes DDP's gradient average the mean over the global batch."""
        return self.world * len(self.part(batch)) / len(batch)

    def total(self, *values: float) -> tuple[float, ...]:
        """Sums over the ranks (a no-op for one)."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])


SINGLE = Ranks()
COLLECTIVE_HOURS = 6  # how long a rank waits in a collective for the others


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches: a permutation seeded by (seed, epoch), cut into ``batch_size`` pieces; the
    last, partial piece is dropped unless it is the only one."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def world_size(cfg: dict) -> int:
    """How many ranks train together: workers per node x nodes."""
    return cfg["distributed"]["workers"] * cfg["distributed"]["nodes"]


def check_layout(cfg: dict, n_train: int) -> None:
    """Every rank needs at least two images of every batch (BatchNorm cannot train on one); several nodes
    need a rendezvous they all reach."""
    d, world = cfg["distributed"], world_size(cfg)
    smallest = min(n_train, cfg["train"]["batch_size"])
    if world > 1 and smallest < 2 * world:
        raise ConfigError(
            f"{world} workers split batches of {smallest} images: each needs at least 2",
            hint=f"raise train.batch_size to {2 * world} or more, or use fewer --workers",
        )
    host, _, port = (d["rendezvous"] or "").rpartition(":")
    if d["nodes"] > 1 and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(
            f"{d['nodes']} nodes need a rendezvous HOST:PORT every one of them reaches, not {d['rendezvous']!r}",
            hint="pass --rendezvous HOST:PORT (the same on every node; the node at HOST serves it)",
        )


def _rank_main(cfg: dict, config_path: str | None, quiet: bool):
    """One rank: join the process group that torchrun's agent set up (RANK, WORLD_SIZE, MASTER_ADDR in the
    environment), train, and return the model directory's card (rank 0) or None."""
    from datetime import timedelta

    import torch.distributed as dist

    from .loop import train

    # the other ranks wait in a collective while rank 0 validates (each epoch) and writes the model (at the
    # end): gloo's default 30 minutes is too short for a large validation split
    dist.init_process_group("gloo", timeout=timedelta(hours=COLLECTIVE_HOURS))
    try:
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        progress.set_enabled(ranks.main and not quiet)
        model = train(cfg, config_path=config_path, ranks=ranks)
        # every rank stays until rank 0 has written the model: a node whose ranks all returned leaves the
        # rendezvous, and its agent (or the store it serves) would stop rank 0's node mid-write
        dist.barrier()
        return None if model is None else (str(model.path), model.card)
    finally:
        dist.destroy_process_group()


def _entry(cfg: dict, config_path: str | None, quiet: bool):
    """The spawned process's entry point (a plain module function, so it pickles by name; the launcher
    records its error with the traceback)."""
    return _rank_main(cfg, config_path, quiet)


@contextlib.contextmanager
def _launcher_scope():
    """torchrun's launcher replaces the process's signal handlers and logs failures on its own: put both back
    afterwards, and make Ctrl-C an interruption (KeyboardInterrupt) again."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    log = logging.getLogger("torch.distributed.elastic")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a failed rank is reported as the factory error it raised
    try:
        yield
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise FactoryError(f"training stopped by signal {exc.sigval.name}") from None
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        log.setLevel(level)


def launch(cfg: dict, config_path: str | None):
    """Train on ``distributed.workers`` processes of this machine (and of the other nodes); returns rank 0's
    canonical model, or None on a node that does not hold rank 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ..config import config_hash
    from .canonical import CanonicalModel

    d = cfg["distributed"]
    workers, nodes = d["workers"], d["nodes"]
    # One node: torchrun --standalone (a private rendezvous on a free loopback port). Several: every node
    # names the same rendezvous, and the run's id is the config's hash, which the same command gives on
    # each. A failed rank ends the run everywhere (no restarts).
    config = LaunchConfig(
        min_nodes=nodes,
        max_nodes=nodes,
        nproc_per_node=workers,
        run_id=f"factory-train-{config_hash(cfg)[:16]}",
        rdzv_backend="c10d",
        rdzv_endpoint=d["rendezvous"] if nodes > 1 else "127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
        local_addr=None if nodes > 1 else "127.0.0.1",
    )
    where = f"{workers} workers" + (f" on each of {nodes} nodes (rendezvous {d['rendezvous']})" if nodes > 1 else "")
    progress.info(f"training on {where} (PyTorch DDP, gloo, torchrun's launcher)")
    try:
        with _launcher_scope():
            results = elastic_launch(config, _entry)(cfg, config_path, not progress.enabled())
    except ChildFailedError as exc:
        raise _worker_error(exc) from None
    except RendezvousError as exc:
        raise InputError(
            f"the training nodes did not meet at {d['rendezvous'] or 'the local rendezvous'}: {exc}",
            hint="run the same command on every node with the same --nodes and --rendezvous HOST:PORT, HOST being "
            "a node every other one reaches",
        ) from None
    if not results or results.get(0) is None:  # rank 0 ran on another node: it wrote the model there
        return None
    path, card = results[0]
    return CanonicalModel(Path(path), card)


def _worker_error(exc) -> FactoryError:
    """The error a failed rank raised, as the factory error it was (its type, message and hint: a bad
    image is still an input error, exit 2), or a FactoryError saying which rank failed and how."""
    from .. import errors

    _rank, failure = exc.get_first_failure()
    raw = getattr(failure, "message", "") or ""
    text = str(raw.get("message", "") if isinstance(raw, dict) else raw).strip()  # the error file's record
    name, _, rest = text.partition(": ")
    message, _, hint = rest.partition("\n  hint: ")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, FactoryError) and message:
        err = FactoryError.__new__(cls)
        FactoryError.__init__(err, message, hint=hint or None)
        return err
    what = text.splitlines()[0][:400] if text else f"exit code {getattr(failure, 'exitcode', '?')}"
    return FactoryError(
        f"a training worker failed: {what}",
        hint="run with --workers 1 to see the whole error in this process (factory --debug shows tracebacks)",
    )
