"""torch.distributed for the training loop: the same code on one process or under `torchrun`
(DDP; gloo on CPU, NCCL on CUDA). Rank 0 does all the I/O: outputs, checkpoints, MLflow."""

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def to_device(batch: dict) -> dict:
    """The batch with its tensors on `device()` (other values as they are). A host tensor goes to a
    GPU from pinned memory without blocking: a plain copy would wait for the device's whole queue."""
    dev = device()

    def moved(v: torch.Tensor) -> torch.Tensor:
        if dev.type == "cuda" and v.device.type == "cpu":
            return v.pin_memory().to(dev, non_blocking=True)
        return v.to(dev)
    return {k: moved(v) if torch.is_tensor(v) else v for k, v in batch.items()}


def init() -> None:
    """Join the process group when launched by torchrun (no-op for a single process)."""
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group(backend)


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    if world_size() == 1:
        return model
    init()
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device().index] if device().type == "cuda" else None)


def no_sync(model: torch.nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    return nullcontext() if last or world_size() == 1 else model.no_sync()


def barrier() -> None:
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
