"""Held-out measures of any language model, base or policy: loss by domain at two context
lengths, passkey retrieval, math exact match (preference measures: herd/evals/preference.py)."""

from dataclasses import dataclass

import torch

from herd.config import positive
from herd.data.io import read_jsonl
from herd.data.tokens import load_streams
from herd.post.generate import sample
from herd.post.preferences import final_answer
from herd.training.lm_stage import eval_losses


@dataclass
class EvaluateConfig:
    short_seq_len: int = 256  # losses of every base model at the pretraining context ...
    long_seq_len: int = 1024  # ... and, on long documents, at the extended one
    math_problems: int = 60
    passkey_docs: int = 20
    max_new_tokens: int = 64
    win_rate_prompts: int = 40

    def check(self, root) -> None:
        positive(self, "short_seq_len", "long_seq_len", "math_problems", "passkey_docs", "max_new_tokens",
                 "win_rate_prompts")


def greedy(model, prompt_ids: list[int], max_new: int, stop_ids: tuple[int, ...], precision: str) -> list[int]:
    return sample(model, prompt_ids, 1, max_new, 0.0, 0, stop_ids, precision=precision)[0]


def math_exact_match(model, fmt, problems, chat: bool, max_new: int, precision: str) -> float:
    """Share of problems whose greedy answer's final number is right (chat or base prompt format)."""
    hits = 0
    for p in problems:
        prompt = fmt.prompt(p["question"]) if chat else fmt.base_prompt(p["question"])
        text = fmt.decode(greedy(model, prompt, max_new, fmt.stops, precision))
        hits += final_answer(text) == p["answer"]
    return round(hits / len(problems), 4)


def passkey_accuracy(model, tok, docs, precision: str) -> float:
    """Share of long documents whose hidden pass key the model continues with."""
    hits = 0
    for doc in docs:
        out = tok.decode(greedy(model, tok.encode(doc["text"]).ids, 6, (), precision))
        hits += doc["answer"] in out.replace(" ", "")
    return round(hits / len(docs), 4)


def model_measures(st, model, tok, fmt, chat: bool) -> dict[str, float]:
    """The measures every language model gets, base or policy: held-out loss by domain at the
    short context, loss on long documents at the long context, passkey retrieval, math exact
    match (in the chat format for a policy)."""
    cfg, precision = st.cfg.evaluate, st.cfg.train.precision
    val = load_streams(st.input("tokenizer"), "validation")
    evals = st.input("corpus") / "evals"
    out = {}
    with torch.no_grad():
        short = eval_losses(st, model, val, cfg.short_seq_len)
        for domain, loss in short.items():
            out[f"val_loss_{domain}_len{cfg.short_seq_len}"] = loss
        if "long" in val:
            out[f"val_loss_long_len{cfg.long_seq_len}"] = eval_losses(st, model, {"long": val["long"]},
                                                                      cfg.long_seq_len)["long"]
    passkeys = read_jsonl(evals / "passkey_test.jsonl")[: cfg.passkey_docs]
    out["passkey_accuracy"] = passkey_accuracy(model, tok, passkeys, precision)
    problems = read_jsonl(evals / "math_test.jsonl")[: cfg.math_problems]
    out["math_exact_match"] = math_exact_match(model, fmt, problems, chat, cfg.max_new_tokens, precision)
    return out
