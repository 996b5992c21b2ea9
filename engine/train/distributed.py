"""DistributedDataParallel plumbing for ``torchrun``: process-group setup, rank queries, reductions.

Single-process runs (the default) see rank 0 of world size 1, and every helper becomes a no-op, so the
rest of the code never branches on whether it runs distributed.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), known before the process group exists."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def init(device_kind: str) -> torch.device | None:
    """Join the process group torchrun describes (NCCL on GPUs, Gloo on CPUs); None when not under torchrun.

    Returns this process's device (cuda:LOCAL_RANK on GPUs).
    """
    if not launched_by_torchrun():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def per_process_batch(batch_size: int, flag: str = "-b/--batch-size") -> int:
    """The share of one process of a total batch (the papers' -b) split over the torchrun processes."""
    world = world_size()
    if batch_size % world:
        raise ValueError(f"{flag} {batch_size} is the total batch: it must be divisible by the {world} processes "
                         "of torchrun")
    return batch_size // world


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity when not distributed)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shared_seed(seed: int, device: torch.device) -> int:
    """Rank 0's ``seed`` on every process, so samplers draw one global order and shards never overlap."""
    t = torch.tensor([seed if is_main() else 0], dtype=torch.long, device=device)
    return int(all_reduce_sum(t).item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process before an evaluation."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` under torchrun, else ``model`` itself.

    BatchNorm normalises with per-process batch statistics (no SyncBatchNorm); DDP copies rank 0's running
    statistics to every process at each forward (``broadcast_buffers``).
    """
    if not is_initialized():
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
