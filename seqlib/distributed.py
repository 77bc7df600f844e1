"""Data-parallel training across processes (``--num-processes N`` or ``accelerate launch``).

Every process draws its own batches; each gradient of Algorithm 1 (the tentative step, g_A,
g_B, the cross-Hessian term and the A-steps) is averaged across processes before it is used,
so the projection and every update see the same numbers everywhere and all processes hold
identical factors. Only the main process writes to the store.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Join the process group described by the launcher's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT: set by `seqlib add --num-processes`, torchrun and accelerate)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def average(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over all processes (unchanged in a single process)."""
    n = world_size()
    if n == 1:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])  # one collective for the whole list
    dist.all_reduce(flat)
    flat /= n
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def same_everywhere(digest: str) -> bool:
    """True if every process computed the same digest."""
    if world_size() == 1:
        return True
    gathered: list[str | None] = [None] * world_size()
    dist.all_gather_object(gathered, digest)
    return len(set(gathered)) == 1


def from_main(obj):
    """``obj`` as the main process has it (e.g. whether its commit succeeded)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device_for(device: str) -> str:
    """Each process on its own GPU (LOCAL_RANK) when launched data-parallel on CUDA."""
    if device in ("cuda", "auto") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
