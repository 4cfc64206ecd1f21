"""Sampling with a KV cache: one prompt, n samples in parallel (the rejection-sampling shape)."""

import torch

from herd.training.distributed import device
from herd.training.precision import autocast


@torch.no_grad()
def sample(model, prompt: list[int], n: int, max_new_tokens: int, temperature: float, top_k: int,
           stop_ids: tuple[int, ...], generator: torch.Generator | None = None,
           precision: str = "bf16") -> list[list[int]]:
    """n continuations of `prompt` (temperature 0 is greedy), each cut after its first stop token."""
    model.eval()
    dev = device()
    total = len(prompt) + max_new_tokens
    cache = model.new_cache(n, total)
    idx = torch.tensor([prompt] * n, device=dev)
    out = torch.zeros(n, 0, dtype=torch.long, device=dev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=dev)
    start = 0
    with autocast(precision):
        for _ in range(max_new_tokens):
            logits = model(idx, cache=cache, start=start)[:, -1].float()
            start += idx.shape[1]
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(dev)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= torch.isin(nxt, stops)
            if done.all():
                break
            idx = nxt[:, None]
    results = []
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), None)
        results.append(row if cut is None else row[: cut + 1])
    return results
