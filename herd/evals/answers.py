"""The loss and greedy exact match of given answers after given prompts: what the long-context
evaluation (generated needles) and the held-out question/answer files (GSM8K test) measure."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from herd.model.cross_entropy import IGNORE
from herd.training.distributed import device
from herd.training.precision import autocast


@torch.no_grad()
def answer_scores(model, pairs: list[tuple[list[int], list[int]]],
                  precision: str) -> tuple[list[bool], list[float]]:
    """For (prompt, answer) pairs of one total length: whether each answer is the greedy
    continuation of its prompt, and its mean loss."""
    model.to(device())  # a loaded checkpoint starts on the CPU
    ids = torch.tensor([prompt + answer for prompt, answer in pairs], device=device())
    labels = torch.full_like(ids, IGNORE)
    for i, (prompt, answer) in enumerate(pairs):
        labels[i, len(prompt) - 1 : len(prompt) + len(answer) - 1] = ids[i, len(prompt) :]
    with autocast(precision):
        hidden = model.hidden(ids)
    mask = labels != IGNORE
    logits = model.lm_head(hidden[mask].float())  # only at answer positions: a long context's logits are large
    losses = F.cross_entropy(logits, labels[mask], reduction="none")
    right = logits.argmax(-1) == labels[mask]
    hits, loss, at = [], [], 0
    for _, answer in pairs:
        n = len(answer)
        hits.append(bool(right[at : at + n].all()))
        loss.append(losses[at : at + n].mean().item())
        at += n
    return hits, loss


def answer_loss(model, fmt, examples: list[dict], precision: str) -> float:
    """Mean loss of the answer tokens given the question in the plain prompt format (how well a
    base model knows worked solutions it never saw)."""
    total, count = 0.0, 0
    for ex in examples:  # one at a time: the examples differ in length
        answer = fmt.tok.encode(" " + ex["answer"]).ids
        _, (loss,) = answer_scores(model, [(fmt.base_prompt(ex["question"]), answer)], precision)
        total, count = total + loss * len(answer), count + len(answer)
    return round(total / count, 4)


def file_stem(path: str) -> str:
    """`answer_loss_<stem>`: the file name without its extensions, as a metric name."""
    return re.sub(r"\W", "_", Path(path).name.split(".")[0])
