"""Language-model data and losses: windows drawn from per-domain token streams to a (possibly
changing) mix, with sequence-length and batch-size ramps, and the pretraining objective with
optional knowledge distillation and the MoE load-balancing term."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from herd.model.cross_entropy import IGNORE
from herd.training.distributed import device
from herd.training.precision import autocast


@dataclass
class RampStep:
    """Use `value` until `until_tokens` training tokens have been seen (Llama 3.1's ramps)."""

    until_tokens: int
    value: int


@dataclass
class MixStep:
    """From `from_step` on, draw domains with these weights."""

    from_step: int
    weights: dict[str, float]


def ramp(schedule, tokens_seen: int, final: int) -> int:
    """The value of a token-budget ramp: each entry holds until `until_tokens` have been seen."""
    for stage in schedule:
        if tokens_seen < stage.until_tokens:
            return stage.value
    return final


class WindowSampler:
    """`sampler(step)` is the step's micro-batches of random windows. Everything depends only on
    (seed, step), which makes the data position of a resumed run exact.

    The plan follows Llama 3.1's recipe scaled down: the sequence length and the batch size ramp
    up after token budgets, and the domain mix can change at given steps."""

    def __init__(self, streams: dict[str, np.ndarray], weights: dict[str, float], seq_len: int,
                 batch_size: int, seed: int, *, steps: int, eot_id: int, micro_batch_size: int | None = None,
                 seq_len_ramp=(), batch_ramp=(), mix_schedule=(), tasks=None):
        # `tasks`: generated rows (`tasks.count` per batch, `tasks(step, seq_len)`) in place of windows.
        self.tasks = tasks
        self.streams = {d: torch.from_numpy(s.astype(np.int64)) for d, s in streams.items()}
        self.seed, self.eot_id = seed, eot_id
        self.micro = micro_batch_size or batch_size
        self.mixes = [(0, dict(weights))] + [(m.from_step, dict(m.weights)) for m in mix_schedule]
        self.plan, seen = [], 0  # (seq_len, batch_size) per step
        for _ in range(steps):
            shape = (ramp(seq_len_ramp, seen, seq_len), ramp(batch_ramp, seen, batch_size))
            self.plan.append(shape)
            seen += shape[0] * shape[1]
        longest = max(s for s, _ in self.plan)
        for _, mix in self.mixes:
            usable = [d for d, w in mix.items() if w > 0 and d in self.streams and len(self.streams[d]) > longest + 1]
            if not usable:
                raise ValueError(f"no token stream longer than {longest + 1} tokens for domains {sorted(mix)}")

    def weights_at(self, step: int) -> dict[str, float]:
        return next(mix for start, mix in reversed(self.mixes) if step >= start)

    def __call__(self, step: int) -> list[dict]:
        seq_len, batch_size = self.plan[min(step, len(self.plan) - 1)]
        mix = self.weights_at(step)
        domains = [d for d, w in sorted(mix.items()) if w > 0 and d in self.streams
                   and len(self.streams[d]) > seq_len + 1]
        probs = torch.tensor([mix[d] for d in domains], dtype=torch.float64)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        generated = self.tasks(step, seq_len) if self.tasks else []
        rows = [torch.tensor(r, dtype=torch.int64) for r in generated]
        for d in torch.multinomial(probs, batch_size - len(rows), replacement=True, generator=g).tolist():
            stream = self.streams[domains[d]]
            start = int(torch.randint(0, len(stream) - seq_len - 1, (1,), generator=g))
            rows.append(stream[start : start + seq_len + 1])
        window = torch.stack(rows)
        labels = window[:, 1:].clone()
        # Document boundaries: never predict the next document's first token from the previous one.
        labels[window[:, :-1] == self.eot_id] = IGNORE
        ids = window[:, :-1]
        return [{"input_ids": ids[i : i + self.micro], "labels": labels[i : i + self.micro]}
                for i in range(0, batch_size, self.micro)]


def lm_loss(model, batch) -> tuple[torch.Tensor, dict]:
    loss = model(batch["input_ids"], labels=batch["labels"])
    return loss, {"tokens": (batch["labels"] != IGNORE).sum()}


class PretrainLoss:
    """Next-token loss, plus (optionally) knowledge distillation from a frozen teacher and the MoE
    load-balancing term.

    Distillation targets: `top1` is AFM's (weight x teacher's top-1 token + (1 - weight) x the true
    token); `kl` is Gemma 2's (the teacher's whole distribution at a temperature, mixed with the
    true token by the same weight)."""

    def __init__(self, aux_coef: float = 0.0, teacher=None, mode: str = "top1", weight: float = 0.9,
                 temperature: float = 1.0):
        self.aux_coef, self.teacher, self.mode = aux_coef, teacher, mode
        self.weight, self.temperature = weight, temperature

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict]:
        if self.teacher is None:
            loss, metrics = lm_loss(model, batch)
            metrics["ce"] = loss.detach()
        else:  # distillation compares whole distributions: the student's logits are needed
            labels = batch["labels"].flatten()
            mask = labels != IGNORE
            flat = model(batch["input_ids"]).float().flatten(0, 1)
            ce = F.cross_entropy(flat, labels, ignore_index=IGNORE)
            metrics = {"tokens": mask.sum(), "ce": ce.detach()}
            with torch.no_grad():
                target = self.teacher(batch["input_ids"]).float().flatten(0, 1)
            if self.mode == "top1":
                distill = F.cross_entropy(flat[mask], target[mask].argmax(-1))
            else:
                t = self.temperature
                distill = F.kl_div((flat[mask] / t).log_softmax(-1), (target[mask] / t).log_softmax(-1),
                                   log_target=True, reduction="batchmean") * t * t
            loss = self.weight * distill + (1 - self.weight) * ce
            metrics["distill"] = distill.detach()
        if self.aux_coef:
            aux = getattr(model, "module", model).aux_loss()
            loss = loss + self.aux_coef * aux
            metrics["moe_aux"] = aux.detach()
        return loss, metrics


@torch.no_grad()
def domain_losses(model, streams: dict[str, np.ndarray], seq_len: int, windows: int,
                  precision: str = "bf16") -> dict[str, float]:
    """Mean next-token loss per domain on evenly spaced held-out windows (deterministic)."""
    model.to(device())  # a stage may evaluate a checkpoint it just loaded (on the CPU) before training it
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
