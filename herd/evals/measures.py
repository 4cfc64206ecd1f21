"""Held-out measures of a model: loss by domain at two context lengths, passkey retrieval, math
exact match, reward accuracy on preference pairs, win rate of one policy over another."""

from dataclasses import dataclass

import torch

from herd.config import ParamError
from herd.data.io import read_jsonl
from herd.data.tokens import load_streams
from herd.post.generate import sample
from herd.post.preferences import final_answer, preference_pairs
from herd.post.scoring import score_responses
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
        for key in ("short_seq_len", "long_seq_len", "math_problems", "passkey_docs", "max_new_tokens",
                    "win_rate_prompts"):
            if getattr(self, key) < 1:
                raise ParamError(key, "must be at least 1")


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


def reward_accuracy(judge, fmt, problems: list[dict], seed: int, precision: str) -> float:
    """How often the reward model prefers the right solution of a held-out problem to a wrong one."""
    pairs = preference_pairs(problems, len(problems), seed)
    chosen = score_responses(judge, fmt, [(p["prompt"], p["chosen"]) for p in pairs], precision=precision)
    rejected = score_responses(judge, fmt, [(p["prompt"], p["rejected"]) for p in pairs], precision=precision)
    return round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs), 4)


def answers(model, fmt, questions: list[str], max_new: int, precision: str) -> list[str]:
    return [fmt.decode(greedy(model, fmt.prompt(q), max_new, fmt.stops, precision)) for q in questions]


def win_rate(judge, fmt, questions: list[str], new: list[str], old: list[str], precision: str) -> float:
    """Share of questions where the reward model scores `new` above `old` (ties count half)."""
    a = score_responses(judge, fmt, list(zip(questions, new, strict=True)), precision=precision)
    b = score_responses(judge, fmt, list(zip(questions, old, strict=True)), precision=precision)
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))
    return round(wins / len(questions), 4)


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
