"""Data-parallel context: torch.distributed under ``torchrun`` (gloo on CPU, nccl on CUDA), or one process.

Data parallelism here is exact-gradient data parallelism: every global batch is split across the ranks
(``shard``), each rank computes the gradient of sum_{i in its part} l_i / n_batch (the *global* batch
size), and the gradients are summed with one all-reduce. The result is the gradient of the batch's mean
loss, each shard weighted by its size, whatever the shard sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """rank, world size and the device this process computes on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """More than one process?"""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that writes the files and prints."""
        return self.rank == 0

    def all_reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (no-op for one process)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.distributed:
            dist.barrier()


def default_device() -> torch.device:
    """CUDA when present (the local GPU under torchrun), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(device: torch.device | None = None) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a one-process context.

    Backend: nccl on CUDA, gloo on CPU.
    """
    device = device if device is not None else default_device()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def shard(index: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous part of ``index`` (sizes differ by at most one; a part may be empty)."""
    return torch.tensor_split(index, ctx.world_size)[ctx.rank]
