"""Data-parallel training under ``torchrun``: one process per CPU share or GPU.

``torchrun --nproc-per-node N -m bert4rec train ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set. Each process joins one process group (gloo on
CPU, NCCL on GPUs, one GPU per process: ``cuda:LOCAL_RANK``) and the trainer wraps its model
in ``DistributedDataParallel``. Every rank draws the same batch order and the same masks from
the same seeded generator and trains on its own rows of every global batch, so the batch size,
step count and learning-rate schedule mean what they mean in one process; see
:meth:`bert4rec.training.Trainer.train_step`. Rank 0 alone validates, logs and writes the run.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from bert4rec.device import resolve_device
from bert4rec.errors import RunError

_FAILED = "bert4rec: rank 0 failed"  # the key of what rank 0 broadcasts instead, failing


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def default_threads(self) -> int:
        """The cores this process may use, shared evenly by the processes of its machine."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (cores or os.cpu_count() or 1) // self.local_world_size)


def launched() -> bool:
    """True in a process that ``torchrun`` started with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Distributed | None:
    """The initialised process group of more than one process, or None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    return Distributed(
        rank=rank, world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
    )


def is_main() -> bool:
    """False only in the processes of a process group other than rank 0."""
    group = current()
    return group is None or group.is_main


@contextmanager
def session(device: str = "auto") -> Iterator[Distributed | None]:
    """Join the process group that ``torchrun`` describes (gloo for CPU training, NCCL for
    ``cuda``) and leave it on exit; yields None outside ``torchrun``. Nested use, or a group the
    caller initialised, is passed through and left for its owner to close."""
    if current() is not None or not launched():
        yield current()
        return
    if resolve_device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # NCCL averages the gradients on the GPUs; the few small settings and clock readings
        # the ranks exchange are CPU tensors, which go through gloo.
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield current()
    except BaseException:
        dist.destroy_process_group()  # the other ranks may be gone: no barrier
        raise
    # Leave together, and only once nothing (a DDP wrapper in a reference cycle) still holds
    # the group: gloo's threads must not outlive it into interpreter shutdown.
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; nothing in one process."""
    if current() is not None:
        dist.barrier()


def share(batch_size: int, rank: int, world_size: int) -> slice:
    """Rows of a global batch that ``rank`` trains on: contiguous, in rank order, sizes differing
    by at most one (the first ``batch_size % world_size`` ranks take one more). Empty when the
    batch has fewer rows than there are ranks."""
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def broadcast_float(value: float, group: Distributed | None) -> float:
    """Rank 0's ``value`` on every rank."""
    if group is None:
        return value
    box = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(box, src=0)
    return float(box.item())


def broadcast_json(value: Any, group: Distributed | None) -> Any:
    """Rank 0's ``value`` (anything JSON can hold) on every rank; sent as JSON text, never as a
    pickle. Where rank 0 failed in :func:`on_main` before it, the other ranks raise
    :class:`RunError` here instead."""
    if group is None:
        return value
    data = json.dumps(value).encode() if group.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8)
    if group.is_main:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    dist.broadcast(buffer, src=0)
    received = json.loads(bytes(buffer.tolist()).decode())
    if isinstance(received, dict) and _FAILED in received and not group.is_main:
        raise RunError(f"rank 0 stopped ({received[_FAILED]}); this process stops with it")
    return received


@contextmanager
def on_main(group: Distributed | None) -> Iterator[None]:
    """Around work that rank 0 does alone while the other ranks wait in :func:`broadcast_json`
    for its outcome (loading the data first, validating, writing a checkpoint or the run): if
    it fails, they are told, and stop with a :class:`RunError`, rather than wait on a process
    that is gone (or crash on its closed connection)."""
    try:
        yield
    except Exception as exc:  # Ctrl-C reaches every rank: nothing to tell
        if group is not None and group.is_main:
            with suppress(Exception):  # the others may be gone already
                broadcast_json({_FAILED: f"{type(exc).__name__}: {exc}"}, group)
        raise


@contextmanager
def main_first(group: Distributed | None) -> Iterator[bool]:
    """Around work that rank 0 does first while the others wait (it yields whether this rank
    is rank 0, which does the work): they go on once it has done it, or stop with its error
    (:func:`on_main`)."""
    main = group is None or group.is_main
    with on_main(group):
        yield main
    broadcast_json(None, group)


@contextmanager
def together(group: Distributed | None) -> Iterator[None]:
    """Around work every rank does on its own before they next meet: if it fails on some, the
    others stop too (a :class:`RunError` naming them) instead of waiting for them."""
    try:
        yield
    except Exception:
        if group is not None:
            with suppress(Exception):
                all_gather_int(1, group)
        raise
    if group is not None:
        failed = [rank for rank, flag in enumerate(all_gather_int(0, group)) if flag]
        if failed:
            raise RunError(f"process(es) {', '.join(map(str, failed))} of this torchrun "
                           "failed (see their messages); this one stops with them")


def all_reduce_mean(value: torch.Tensor, group: Distributed | None) -> torch.Tensor:
    """The mean of ``value`` over the ranks (a new tensor)."""
    if group is None:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / group.world_size


def broadcast_module(module: torch.nn.Module, group: Distributed | None) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank."""
    if group is None:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def all_gather_int(value: int, group: Distributed | None) -> list[int]:
    """``value`` of every rank, in rank order."""
    if group is None:
        return [value]
    parts = [torch.zeros(1, dtype=torch.int64) for _ in range(group.world_size)]
    dist.all_gather(parts, torch.tensor([value], dtype=torch.int64))
    return [int(part.item()) for part in parts]
