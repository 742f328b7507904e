"""``factory train --workers N``: data-parallel training (PyTorch DDP) in N processes on this machine.

Launcher: torchrun's engine (``torch.distributed.elastic``), called as a library. Not Ray Train: the
factory's core never imports Ray (it is an optional extra), torchrun ships with PyTorch, and Ray Train's
``TorchTrainer`` would set up the very same ``DistributedDataParallel`` process group underneath.
Backend: gloo (the factory trains on CPU; NCCL needs CUDA devices, which this build does not use).

What makes N processes train the model one process would:

* every rank draws the same **global** batches (one seeded permutation per epoch, :func:`epoch_batches`)
  and takes its own slice of each; augmentation is seeded per (seed, epoch, image), so an image is
  augmented the same on whichever rank it lands;
* each rank's loss is scaled by ``N * local / global`` so DDP's gradient average is the mean over the
  global batch, whatever the split;
* rank 0 alone validates, keeps the best epoch, logs to MLflow and writes the model directory; the
  others follow its decision to stop.

BatchNorm statistics are per rank (PyTorch's SyncBatchNorm needs CUDA), and dropout masks differ, so
N workers are not bit-identical to one; a given seed and N reproduce themselves exactly on one host.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from .. import progress
from ..errors import ConfigError, FactoryError

__all__ = ["Ranks", "SINGLE", "epoch_batches", "check_split", "launch"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training workers (``world`` 1: no process group at all)."""

    rank: int = 0
    world: int = 1

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


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches: a permutation seeded by (seed, epoch), cut into ``batch_size`` pieces; the
    last, partial piece is dropped unless it is the only one."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def check_split(n_train: int, batch_size: int, workers: int) -> None:
    """Every rank needs at least two images of every batch (BatchNorm cannot train on one)."""
    smallest = min(n_train, batch_size)
    if workers > 1 and smallest < 2 * workers:
        raise ConfigError(
            f"{workers} workers split batches of {smallest} images: each needs at least 2",
            hint=f"raise train.batch_size to {2 * workers} or more, or use fewer --workers",
        )


def _rank_main(cfg: dict, config_path: str | None, quiet: bool):
    """One rank: join the process group that torchrun's agent set up (RANK, WORLD_SIZE, MASTER_ADDR in the
    environment), train, and return the model directory's card (rank 0) or None."""
    import torch.distributed as dist

    from .loop import train

    dist.init_process_group("gloo")
    try:
        ranks = Ranks(dist.get_rank(), dist.get_world_size())
        progress.set_enabled(ranks.main and not quiet)
        model = train(cfg, config_path=config_path, ranks=ranks)
        return None if model is None else (str(model.path), model.card)
    finally:
        dist.destroy_process_group()


def _entry(cfg: dict, config_path: str | None, quiet: bool):
    """The spawned process's entry point (a plain module function, so it pickles by name): a failure is
    recorded for the launcher with its traceback."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_rank_main)(cfg, config_path, quiet)


def launch(cfg: dict, config_path: str | None):
    """Train on ``distributed.workers`` processes of this machine; returns rank 0's canonical model."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .canonical import CanonicalModel

    workers = cfg["distributed"]["workers"]
    # torchrun --standalone: a private rendezvous on a free loopback port; a failed rank ends the run
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=workers,
        run_id=f"factory-train-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
        local_addr="127.0.0.1",
    )
    progress.info(f"training on {workers} workers (PyTorch DDP, gloo, torchrun's launcher)")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # a failed rank is reported below
    try:
        results = elastic_launch(config, _entry)(cfg, config_path, not progress.enabled())
    except ChildFailedError as exc:
        raise _worker_error(exc) from None
    path, card = results[0]
    return CanonicalModel(path, card)


def _worker_error(exc) -> FactoryError:
    """The error a failed rank raised, as the factory error it was (its type, message and hint: a bad
    image is still an input error, exit 2), or a FactoryError saying which rank failed and how."""
    from .. import errors

    failure = next(iter(exc.failures.values()), None)
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
