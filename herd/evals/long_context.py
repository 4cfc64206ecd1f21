"""Long-context measures of a base model: retrieval of generated needles by context length and
depth (passkey, key-value, multi-needle, quoted-passage QA; herd/data/long_tasks.py), the loss of
their answers, and the loss by position on held-out long documents.

Retrieval is greedy exact match computed in one teacher-forced pass: greedy decoding reproduces
the answer exactly when every answer token is the model's top prediction given the right prefix.
"""

import random

import numpy as np
import torch
import torch.nn.functional as F

from herd.data.long_tasks import TASKS, DoesNotFit, TaskMaker
from herd.evals.answers import answer_scores
from herd.training.distributed import device
from herd.training.precision import autocast


def depths(n: int) -> list[float]:
    """`n` needle depths from the start of the context to its end."""
    return [round(i / (n - 1), 3) for i in range(n)] if n > 1 else [0.5]


def needle_grid(model, maker: TaskMaker, lengths: list[int], n_depths: int, per_cell: int, seed: int,
                precision: str) -> list[dict]:
    """One row per (kind, length, depth): accuracy and answer loss over `per_cell` tasks. The tasks
    depend only on the seed, so every model is asked the same questions. A kind too long for a
    length (with a small vocabulary, say) has no row there."""
    rows = []
    for kind in TASKS:
        for length in lengths:
            for depth in depths(n_depths):
                rng = random.Random(f"{seed}:{kind}:{length}:{depth}")
                try:
                    tasks = [maker.make(kind, length, depth, rng) for _ in range(per_cell)]
                except DoesNotFit:
                    continue
                hits, loss = answer_scores(model, [(t.prompt, t.answer) for t in tasks], precision)
                accuracy, answer_loss = round(sum(hits) / len(hits), 4), round(float(np.mean(loss)), 4)
                rows.append({"kind": kind, "length": length, "depth": depth, "accuracy": accuracy,
                             "answer_loss": answer_loss})
    return rows


def grid_metrics(rows: list[dict]) -> dict[str, float]:
    """Per kind and length, accuracy over depths (`retrieval_<kind>_len<L>`); per length, the answer
    loss over every kind and depth (`answer_loss_len<L>`)."""
    out = {}
    for length in sorted({r["length"] for r in rows}):
        at = [r for r in rows if r["length"] == length]
        for kind in TASKS:
            cells = [r["accuracy"] for r in at if r["kind"] == kind]
            if cells:
                out[f"retrieval_{kind}_len{length}"] = round(float(np.mean(cells)), 4)
        out[f"answer_loss_len{length}"] = round(float(np.mean([r["answer_loss"] for r in at])), 4)
    return out


@torch.no_grad()
def loss_by_position(model, streams: dict[str, np.ndarray], seq_len: int, windows: int, buckets: int,
                     precision: str) -> list[dict]:
    """Mean next-token loss in `buckets` equal stretches of position, over evenly spaced held-out
    windows of every stream long enough: whether the model uses (or is confused by) far context."""
    model.to(device())  # a loaded checkpoint starts on the CPU
    totals = torch.zeros(seq_len)
    count = 0
    for stream in streams.values():
        if len(stream) <= seq_len + 1:
            continue
        for s in np.linspace(0, len(stream) - seq_len - 1, num=windows).astype(np.int64):
            row = torch.from_numpy(stream[s : s + seq_len + 1].astype(np.int64)).to(device())[None]
            with autocast(precision):
                hidden = model.hidden(row[:, :-1])
            logits = model.lm_head(hidden[0].float())
            totals += F.cross_entropy(logits, row[0, 1:], reduction="none").cpu()
            count += 1
    if not count:
        return []
    per_token = totals / count
    edges = np.linspace(0, seq_len, buckets + 1).astype(int)
    return [{"position": int(hi), "loss": round(per_token[lo:hi].mean().item(), 4)}
            for lo, hi in zip(edges, edges[1:], strict=False)]
