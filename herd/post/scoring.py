"""Scoring responses with a reward model, in batches."""

import torch

from herd.post.losses import rewards
from herd.training.distributed import device, to_device
from herd.training.precision import autocast


@torch.no_grad()
def score_responses(model, fmt, pairs: list[tuple[str | list[dict], str]], seq_len: int = 512, batch_size: int = 32,
                    precision: str = "bf16") -> list[float]:
    """Reward of each (prompt, response text); a prompt is a question or a conversation's messages."""
    rows = [(fmt.prompt(p), fmt.response(r)) for p, r in pairs]
    model.to(device()).eval()
    scores = []
    for i in range(0, len(rows), batch_size):
        batch = to_device(fmt.conversations(rows[i : i + batch_size], seq_len))
        with autocast(precision):
            scores += rewards(model, batch).tolist()
    return scores
