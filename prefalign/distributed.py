"""Data parallelism for the passes outside Lightning's ``fit``: reference log-probs, scoring, generation.

When a launcher starts several processes of one command (``torchrun --nproc_per_node N score.py ...``, or
``srun`` with the same variables exported: ``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; or the tasks of one SLURM job, as submitit starts them with ``tasks_per_node``: ``SLURM_NTASKS``
> 1, ``SLURM_PROCID``, ``SLURM_LOCALID``, read the way Lightning's ``SLURMEnvironment`` reads them, so that the
address and port are those its DDP would use), :func:`init_from_env` joins them in one ``torch.distributed``
process group and the passes split their batches between the ranks (:func:`share`), put the results back in
data order on every rank (:func:`gather_shares`), and leave the files to rank 0 (:func:`on_main`,
:func:`barrier`). Lightning's ``DDPStrategy`` reuses an initialised group, so a ``train.py`` run under
``torchrun`` trains in the same one.

The helpers that exchange Python objects, and the waits for rank 0, go through a second, ``gloo`` group whose
timeout is :data:`PATIENCE` rather than the default group's 30 minutes: while rank 0 works alone (waits for another
run's lock on a cache entry, trains an auxiliary model that the others then load) the others wait in a
collective, and that may take longer than half an hour.

The processes that Lightning's own DDP launcher re-executes (``trainer.devices=N`` under plain ``python``) have
``WORLD_SIZE`` and ``LOCAL_RANK`` but no ``RANK``: their rank 0 did the passes before ``fit`` alone, so they are
not made ranks of those passes here and compute them alone too (from the cache rank 0 wrote).

With one process every helper is a no-op (world size 1, rank 0), so nothing changes for a plain ``python`` run.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")

# how long the other ranks wait for rank 0 working alone (see the module docstring)
PATIENCE = timedelta(hours=24)
_object_group: Any = None


def slurm_tasks() -> dict[str, str]:
    """The torchrun-style variables of this SLURM task (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) when it is one of several tasks of a job step and no launcher set ``RANK``; empty otherwise.

    The values come from Lightning's ``SLURMEnvironment`` (rank from ``SLURM_PROCID``, address from the first node
    of ``SLURM_NODELIST``, port from the job id), which also runs the job's ``fit``; the process group made here
    is the one its ``DDPStrategy`` then reuses.
    """
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():  # an interactive allocation (job name bash or interactive): not tasks of a step
        return {}
    slurm = SLURMEnvironment()
    return {
        "RANK": str(slurm.global_rank()),
        "WORLD_SIZE": str(slurm.world_size()),
        "LOCAL_RANK": str(slurm.local_rank()),
        "MASTER_ADDR": slurm.main_address,
        "MASTER_PORT": str(slurm.main_port),
    }


def launched_world_size() -> int:
    """The number of processes a launcher started (``WORLD_SIZE`` when ``RANK`` is set too, ``SLURM_NTASKS`` for
    the tasks of a SLURM job step; 1 otherwise)."""
    if "RANK" not in os.environ:
        return int(slurm_tasks().get("WORLD_SIZE", "1"))
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(timeout: timedelta = timedelta(minutes=30)) -> bool:
    """Join the launcher's process group once; returns whether this process is one of several.

    Does nothing when the group is already initialised (by an earlier call or by Lightning) or when the process
    was not started as one of several (:func:`launched_world_size` is 1). The backend is ``gloo`` for CPU
    tensors and, where the machine has a GPU for each of its processes, ``nccl`` for CUDA tensors too (each rank
    on ``cuda:LOCAL_RANK``).

    Args:
        timeout: how long a collective waits for the other ranks.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    os.environ.update(slurm_tasks())  # env:// reads them (nothing to add under torchrun)
    backend = "gloo"
    # NCCL needs a device per process of the machine (a CPU run of more processes than GPUs stays on gloo)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", launched_world_size()))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_processes:
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    atexit.register(_destroy)  # as Lightning does for a group it made (NCCL warns at exit otherwise)
    log.info("data-parallel passes: rank %d of %d (%s)", rank(), world_size(), backend)
    if not is_main():  # progress bars from rank 0 only (ours check is_main(); these are transformers')
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    return True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """The number of ranks of the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, or ``SLURM_LOCALID`` for a task of a SLURM job step;
    0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK") or slurm_tasks().get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files, logs and shows progress bars)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` for this process: ``cuda:LOCAL_RANK`` on CUDA (one process per GPU, started by torchrun, SLURM or
    Lightning's launcher; ``cuda:0`` for a plain run), else ``device`` itself."""
    index = local_rank()
    # a process without a GPU of its own (more processes than GPUs) keeps ``device``
    if device.type == "cuda" and (index == 0 or index < torch.cuda.device_count()):
        return torch.device("cuda", index)
    return device


def _objects() -> Any:
    """The ``gloo`` group of the object collectives and the waits (made on first use, by every rank at once)."""
    global _object_group
    if _object_group is None:
        _object_group = dist.new_group(backend="gloo", timeout=PATIENCE)
    return _object_group


def barrier() -> None:
    """Wait until every rank is here, for up to :data:`PATIENCE` (no-op with one process)."""
    if world_size() > 1:
        dist.barrier(group=_objects())


def share(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th, starting at its rank.

    Round-robin rather than contiguous blocks, so that length-sorted batches spread their cost evenly.
    :func:`gather_shares` puts the shares back in order.
    """
    return list(items[rank() :: world_size()])


def share_batches(loader: Any, desc: str) -> Iterator[Any]:
    """This rank's batches of ``loader`` (every ``world_size``-th, starting at its rank, as :func:`share`), with a
    progress bar on rank 0. The other ranks' batches are still collated by the loader, and skipped."""
    from tqdm.auto import tqdm

    count = len(range(rank(), len(loader), world_size()))
    mine = itertools.islice(loader, rank(), None, world_size())
    return iter(tqdm(mine, desc=desc, total=count, leave=False, dynamic_ncols=True, disable=not is_main()))


def gather_shares(local: Sequence[T]) -> list[T]:
    """Every rank's :func:`share` of results, back in the order of the items shared, on every rank.

    Args:
        local: this rank's results, one per item of its share, in its order. Anything picklable (it goes through
            ``all_gather_object``); tensors should be on the CPU.
    """
    size = world_size()
    if size == 1:
        return list(local)
    shares: list[Any] = [None] * size
    dist.all_gather_object(shares, list(local), group=_objects())
    total = sum(len(part) for part in shares)
    return [shares[index % size][index // size] for index in range(total)]


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (picklable; tensors on the CPU), on every rank."""
    if world_size() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_objects())
    return box[0]  # type: ignore[return-value]


def on_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only, its result on every rank.

    An exception on rank 0 is raised there and, as a ``RuntimeError`` naming it, on the other ranks too, so
    that they stop instead of waiting for rank 0 at their next collective.
    """
    if world_size() == 1:
        return compute()
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, compute())
        except BaseException as error:
            broadcast((False, repr(error)))
            raise
    ok, value = broadcast(outcome)
    if not ok:
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over the ranks, in place, in the default group (its device's backend; no-op with one
    process)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
