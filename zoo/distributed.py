"""torch.distributed as torchrun sets it up: which rank this process is, and the process group's lifetime."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join the torchrun process group when launched by torchrun: NCCL for processes on GPUs, gloo for processes
    on CPUs (also on a machine that has GPUs: ``--device cpu``)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
