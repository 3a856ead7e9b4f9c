"""Distributed helpers: the process group under ``torchrun`` and a resumable, sharded batch order.

Launched by ``torchrun --nproc-per-node N``, each process reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from the environment and joins a process group (NCCL on CUDA, gloo on CPU). Without
those variables everything runs as a single process of world size 1.

The batch order is a pure function of ``(seed, epoch)``: every rank computes the same permutation
of the dataset, cuts it into global batches and takes its own contiguous slice of each. So a run
with world size W and per-rank batch B sees exactly the samples of a single-process run with batch
W*B, and a resumed run can skip the batches an interrupted epoch had already consumed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "ShardedBatchSampler", "init_distributed", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` / None -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its device, and whether it owns a
    process group it must destroy at the end."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and evaluates."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over ranks (a no-op for one process)."""
        if not self.enabled:
            return values
        values = values.detach().clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def shutdown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | torch.device | None = "auto") -> DistributedContext:
    """Join the process group ``torchrun`` describes, or return a single-process context.

    On CUDA each rank uses ``cuda:LOCAL_RANK`` and NCCL; on CPU, gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(device=device)
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"init_distributed: WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device, owns)


class ShardedBatchSampler:
    """Batches of dataset indices for one rank: its slice of each global batch of an epoch.

    Args:
        length: dataset size.
        global_batch: samples per optimiser step over all ranks (a multiple of ``world_size``).
        rank, world_size: this process and the number of processes.
        seed: with the epoch, fixes the permutation (``shuffle=True``).
        shuffle: permute per epoch; otherwise the dataset order.
        drop_last: drop the final incomplete global batch (training); otherwise keep it, split
            as evenly as possible over ranks.
    """

    def __init__(self, length: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(f"ShardedBatchSampler: global batch {global_batch} must be a positive multiple "
                             f"of the world size {world_size}")
        if length < (global_batch if drop_last else 1):
            raise ValueError(f"ShardedBatchSampler: the dataset has {length} samples, fewer than one "
                             f"batch of {global_batch}")
        self.length, self.global_batch = length, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start_batch`` batches (resume)."""
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.length, self.global_batch)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        for batch in range(self.start_batch, self.batches_per_epoch()):
            members = order[batch * self.global_batch : (batch + 1) * self.global_batch]
            shards = np.array_split(members, self.world_size)
            yield shards[self.rank].tolist()
