"""Distributed training: the process group, collective operations and the samplers.

A run is distributed when ``torchrun`` (or an equivalent launcher) sets ``WORLD_SIZE`` above 1;
otherwise every function here is a no-op for a single process, so the training loop is written
once for both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class DistContext:
    """The process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group described by the torchrun environment, if any.

    Uses NCCL on CUDA and Gloo on the CPU. A group that already exists is reused (and left for its
    creator to destroy).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
            owns_group=False,
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size
    )
    return DistContext(rank, world_size, local_rank, owns_group=True)


def process_device(device: torch.device, ctx: DistContext) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` in a distributed CUDA run, else ``device``."""
    if device.type == "cuda" and ctx.distributed:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: Tensor, ctx: DistContext, op: Literal["sum", "max"] = "sum") -> Tensor:
    """Reduce ``tensor`` in place over all processes (unchanged in a single process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def barrier(ctx: DistContext) -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if ctx.distributed:
        dist.barrier()


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` keys so the dataset can augment as a function of the epoch.

    Wraps a :class:`DistributedSampler` (which shards and shuffles by ``seed + epoch``) and can
    start part-way through an epoch to resume after an interruption.
    """

    def __init__(self, inner: DistributedSampler[Any]) -> None:
        self.inner = inner
        self.epoch = 0
        self.start = 0

    @classmethod
    def shuffled(cls, dataset: Dataset[Any], ctx: DistContext, seed: int) -> EpochSampler:
        """This process's shard of ``dataset``, reshuffled every epoch from ``seed``."""
        inner = DistributedSampler(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        return cls(inner)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` samples."""
        self.epoch = epoch
        self.start = start
        self.inner.set_epoch(epoch)

    @property
    def epoch_length(self) -> int:
        """Samples of this process in a whole epoch."""
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.inner):
            if position >= self.start:
                yield int(index), self.epoch

    def __len__(self) -> int:
        return max(len(self.inner) - self.start, 0)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: an exact partition, nothing repeated."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
