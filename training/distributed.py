"""Distributed training under torchrun (DistributedDataParallel): which rank this process is, the
device it trains on, buffers averaged across ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DistInfo", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "DistInfo":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        return cls()


def init_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment): NCCL when CUDA is available, else gloo. A no-op otherwise."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DistInfo.current()


def resolve_device(device: str, dist_info: DistInfo | None = None) -> torch.device:
    """"auto" → CUDA when available (this rank's ``cuda:LOCAL_RANK`` in a distributed run)."""
    info = dist_info or DistInfo()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank if info.distributed else torch.cuda.current_device())
        return torch.device("cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if d.type == "cuda" and d.index is None and info.distributed:
        d = torch.device("cuda", info.local_rank)
    return d


def _average_buffers(model: nn.Module, world_size: int) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks, so every
    rank evaluates and saves the same network (DDP syncs parameters, and buffers only from rank 0
    at the start of each forward)."""
    import torch.distributed as dist

    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world_size)
