"""Held-out measures of any language model, base or policy: loss by domain at two context
lengths, math exact match (long-context measures: herd/evals/long_context.py; preference measures:
herd/evals/preference.py)."""

from dataclasses import dataclass, field

import torch

from herd.config import ParamError, positive
from herd.data.io import read_jsonl
from herd.data.tokens import load_streams
from herd.post.generate import greedy
from herd.post.preference_data import PreferenceSource, check_sources
from herd.post.task import exact_match, test_problems
from herd.training.lm_stage import eval_losses


@dataclass
class EvaluateConfig:
    short_seq_len: int = 256  # losses of every base model at the pretraining context ...
    long_seq_len: int = 1024  # ... and, on long documents and generated tasks, at the extended one
    math_problems: int = 60
    task_problems: int = 500  # of the post-training task's held-out problems (task.kind)
    max_new_tokens: int = 64
    win_rate_prompts: int = 500
    # Long-context retrieval of base models: below, at and beyond the trained lengths.
    context_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    needle_depths: int = 5  # from the start of the context to its end
    needles_per_cell: int = 2  # tasks of each kind per (length, depth)
    position_buckets: int = 16  # loss by position on long documents at long_seq_len
    # Held-out {question, answer} jsonl(.gz) files (e.g. GSM8K test): each base model's loss on the
    # answer given the question, `answer_loss_<file name>`, over at most answer_loss_examples of them.
    answer_loss_files: list[str] = field(default_factory=list)
    answer_loss_examples: int = 200
    # Held-out preference pairs the reward model is also judged on (e.g. HH-RLHF test, with a limit).
    preference_files: list[PreferenceSource] = field(default_factory=list)

    def check(self, root) -> None:
        positive(self, "short_seq_len", "long_seq_len", "math_problems", "task_problems", "max_new_tokens",
                 "win_rate_prompts",
                 "needle_depths", "needles_per_cell", "position_buckets", "answer_loss_examples")
        for i, path in enumerate(self.answer_loss_files):
            if not (root / path).is_file():
                raise ParamError(f"answer_loss_files[{i}]", f"input file {root / path} does not exist")
        if not self.context_lengths or min(self.context_lengths) < 64:
            raise ParamError("context_lengths", f"needs lengths of at least 64 tokens (a task's question and "
                             f"needle take ~40), got {list(self.context_lengths)}")
        check_sources(self.preference_files, root, "preference_files")
        if self.long_seq_len not in self.context_lengths:
            raise ParamError("context_lengths", f"must include long_seq_len ({self.long_seq_len}), the context the "
                             f"headline long-context measures are taken at")


def math_exact_match(model, fmt, problems, chat: bool, max_new: int, precision: str, compile: bool = False) -> float:
    """Share of problems whose greedy answer's final number is right (chat or base prompt format)."""
    prompts = [fmt.prompt(p["question"]) if chat else fmt.base_prompt(p["question"]) for p in problems]
    outputs = greedy(model, prompts, max_new, fmt.stops, precision, compile=compile)
    answer = fmt.decode if chat else fmt.base_answer
    hits = sum(exact_match(answer(o), p["answer"]) for o, p in zip(outputs, problems, strict=True))
    return round(hits / len(problems), 4)


def model_measures(st, model, fmt, chat: bool) -> dict[str, float]:
    """The measures every language model gets, base or policy: held-out loss by domain at the
    short context, loss on long documents at the long context, exact match on the word problems
    and on the post-training task's held-out problems (in the chat format for a policy)."""
    cfg, precision, compile = st.cfg.evaluate, st.cfg.train.precision, st.cfg.runtime.generate.compile
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
    problems = read_jsonl(evals / "math_test.jsonl")[: cfg.math_problems]
    out["math_exact_match"] = math_exact_match(model, fmt, problems, chat, cfg.max_new_tokens, precision, compile)
    task = test_problems(st.cfg.task.kind, evals)[: cfg.task_problems]
    out["task_exact_match"] = math_exact_match(model, fmt, task, chat, cfg.max_new_tokens, precision, compile)
    return out
