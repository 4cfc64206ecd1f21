"""Language-model data and loss: windows sampled from per-domain token streams to a mix."""

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


class WindowSampler:
    """`sampler(step)` is a batch of random windows whose domains follow `weights`. It depends only
    on (seed, step), which makes the data position of a resumed run exact."""

    def __init__(self, streams: dict[str, np.ndarray], weights: dict[str, float], seq_len: int,
                 batch_size: int, seed: int):
        self.domains = [d for d, w in sorted(weights.items()) if w > 0 and d in streams
                        and len(streams[d]) > seq_len + 1]
        if not self.domains:
            raise ValueError(f"no token stream longer than {seq_len + 1} tokens for domains {sorted(weights)}")
        self.streams = {d: torch.from_numpy(streams[d].astype(np.int64)) for d in self.domains}
        self.probs = torch.tensor([weights[d] for d in self.domains], dtype=torch.float64)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    def __call__(self, step: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = []
        for d in torch.multinomial(self.probs, self.batch_size, replacement=True, generator=g).tolist():
            stream = self.streams[self.domains[d]]
            start = int(torch.randint(0, len(stream) - self.seq_len - 1, (1,), generator=g))
            rows.append(stream[start : start + self.seq_len + 1])
        window = torch.stack(rows)
        return {"input_ids": window[:, :-1], "labels": window[:, 1:]}


def lm_loss(model, batch) -> tuple[torch.Tensor, dict]:
    logits = model(batch["input_ids"])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE)
    return loss, {"tokens": int((batch["labels"] != IGNORE).sum())}


@torch.no_grad()
def domain_losses(model, streams: dict[str, np.ndarray], seq_len: int, windows: int,
                  precision: str = "bf16") -> dict[str, float]:
    """Mean next-token loss per domain on evenly spaced held-out windows (deterministic)."""
    from herd.train import autocast, device

    out = {}
    for domain, stream in sorted(streams.items()):
        if len(stream) <= seq_len + 1:
            continue
        starts = np.linspace(0, len(stream) - seq_len - 1, num=windows).astype(np.int64)
        batch = torch.stack([torch.from_numpy(stream[s : s + seq_len + 1].astype(np.int64)) for s in starts])
        with autocast(precision):
            loss, _ = lm_loss(model, {"input_ids": batch[:, :-1].to(device()), "labels": batch[:, 1:].to(device())})
        out[domain] = round(loss.item(), 4)
    return out


def unigram_entropy(streams: dict[str, np.ndarray]) -> float:
    """Entropy (nats/token) of the corpus' unigram distribution: the loss of a model that ignores
    context. Pretraining must get well below it."""
    counts = np.bincount(np.concatenate(list(streams.values())).astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
