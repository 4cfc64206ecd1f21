"""rejection_sample: K samples per prompt from the current policy (or a committee of it and the
policies before it, as AFM), each checked by the verifier and scored by the reward model; the best
becomes SFT data, and the best over each distinct sample that loses to it a DPO pair (Llama 3's
post-training loop). Records how much best-of-K gains over a random sample, and the reward model's
accuracy on these on-policy samples (prompts it never saw)."""

import random
from collections import Counter
from dataclasses import dataclass

import torch

from herd.config import ParamError, non_negative, positive
from herd.data.io import read_table, write_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.generate import generate
from herd.post.scoring import score_responses
from herd.post.task import TaskConfig, prompts, verify
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig

SCORES = ("verifier", "reward", "both")
EARLIER = ("earlier_1", "earlier_2", "earlier_3")  # the committee's older members, newest first


@dataclass
class RejectionSampleConfig:
    prompts: int = 600
    k: int = 8  # samples per prompt from each committee member
    committee: int = 1  # the current policy and up to committee - 1 policies before it in the chain
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0  # 0: off
    # What ranks the samples: the verifier (right answers first), the reward model, or both (the
    # verifier first, the reward model among equally right samples).
    score: str = "both"
    batch_size: int = 128  # rows generated together

    def check(self, root) -> None:
        positive(self, "prompts", "max_new_tokens", "batch_size", "committee")
        non_negative(self, "temperature", "top_k")
        if self.k < 2:
            raise ParamError("k", "needs at least 2 samples per prompt to pick a best and a worst")
        if not 0 < self.top_p <= 1:
            raise ParamError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.score not in SCORES:
            raise ParamError("score", f"must be one of {', '.join(SCORES)}, got '{self.score}'")
        if self.committee > 1 + len(EARLIER):
            raise ParamError("committee", f"at most {1 + len(EARLIER)} members, got {self.committee}")


SPEC = StageSpec(__doc__, inputs=("policy", "reward", "corpus", "filtered"), optional=EARLIER,
                 params={"seed": int, "train": TrainConfig, "task": TaskConfig,
                         "rejection_sample": RejectionSampleConfig})


def rank_key(sample: dict, score: str) -> tuple:
    if score == "verifier":
        return (sample["correct"],)
    if score == "reward":
        return (sample["reward"],)
    return sample["correct"], sample["reward"]


def losers(ranked: list[dict], score: str) -> list[str]:
    """The distinct samples that lose to the best on what ranks first (the verifier's verdict, or
    the reward alone), the most frequent first: every mistake the policy makes is pushed down, not
    only its worst. A single rejected answer per prompt moves the probability it loses onto the
    answers beside it (on this task, off by one the other way)."""
    best = ranked[0]
    if score == "reward":
        lost = [s for s in ranked if s["reward"] < best["reward"]]
    else:
        lost = [s for s in ranked if best["correct"] and not s["correct"]]
    counts = Counter(s["text"] for s in lost)
    return sorted(counts, key=lambda text: -counts[text])


def onpolicy_accuracy(rows: list[dict]) -> tuple[float | None, int]:
    """How often the reward model scores a right sample above a wrong one of the same prompt."""
    wins = pairs = 0
    for row in rows:
        right = [s["reward"] for s in row["samples"] if s["correct"]]
        wrong = [s["reward"] for s in row["samples"] if not s["correct"]]
        wins += sum(r > w for r in right for w in wrong)
        pairs += len(right) * len(wrong)
    return (round(wins / pairs, 4) if pairs else None), pairs


def run(st: StageRun) -> None:
    cfg, precision = st.cfg.rejection_sample, st.cfg.train.precision
    members = ["policy", *[r for r in EARLIER if r in st.inputs]][: cfg.committee]  # round 1 has one
    fmt = ChatFormat(load_tokenizer(st.input("policy") / "model"))
    pool = prompts(st.cfg.task.kind, st.input("corpus") / "evals", read_table(st.input("filtered") / "train"), "policy")
    if not pool:
        raise HerdError(f"rejection_sample found no {st.cfg.task.kind} prompts")
    # Each round draws its own prompts (a round's stage name differs).
    problems = random.Random(f"{st.name}:{st.seed}").sample(pool, min(cfg.prompts, len(pool)))
    g = torch.Generator().manual_seed(st.seed)
    samples: list[list[dict]] = [[] for _ in problems]
    for role in members:
        model = load_checkpoint(st.input(role) / "model")
        chat = st.upstream_manifest(role).get("model_kind") == "policy"  # a base answers in its pretraining format
        encode, answer = (fmt.prompt, fmt.decode) if chat else (fmt.base_prompt, fmt.base_answer)
        outputs = generate(model, [encode(p["question"]) for p in problems], cfg.max_new_tokens, fmt.stops,
                           n=cfg.k, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=g,
                           precision=precision, batch_size=cfg.batch_size, compile=st.cfg.runtime.generate.compile)
        for p, out, mine in zip(problems, outputs, samples, strict=True):
            mine += [{"member": st.upstream_manifest(role)["stage"], "text": answer(o),
                      "correct": verify(answer(o), p["answer"])} for o in out]
        del model
    judge = load_checkpoint(st.input("reward") / "model")
    flat = [(p["question"], s["text"]) for p, mine in zip(problems, samples, strict=True) for s in mine]
    scores = iter(score_responses(judge, fmt, flat, precision=precision))
    rows = []
    for p, mine in zip(problems, samples, strict=True):
        for s in mine:
            s["reward"] = round(next(scores), 4)
        ranked = sorted(mine, key=lambda s: rank_key(s, cfg.score), reverse=True)
        best = ranked[0]
        rows.append({"id": p["id"], "prompt": p["question"], "answer": p["answer"], "samples": mine,
                     # SFT takes a best sample the verifier accepts (when it ranks); DPO pairs it with each
                     # sample it beats.
                     "best": best["text"], "accepted": best["correct"] or cfg.score == "reward",
                     "rejected": losers(ranked, cfg.score)})
    write_jsonl(rows, st.out / "samples.jsonl")
    st.metrics.update(sampling_metrics(rows, cfg.score))
    st.manifest["committee"] = [st.upstream_manifest(r)["stage"] for r in members]


def sampling_metrics(rows: list[dict], score: str) -> dict:
    n = len(rows)
    every = [s for row in rows for s in row["samples"]]
    by_reward = [max(row["samples"], key=lambda s: s["reward"])["correct"] for row in rows]
    accuracy, pairs = onpolicy_accuracy(rows)
    metrics = {
        "prompts": n, "samples": len(every),
        "random_correct_rate": round(sum(s["correct"] for s in every) / len(every), 4),
        "best_of_k_verifier_correct_rate": round(sum(any(s["correct"] for s in row["samples"]) for row in rows) / n, 4),
        "best_of_k_reward_correct_rate": round(sum(by_reward) / n, 4),
        "best_correct_rate": round(sum(max(row["samples"], key=lambda s: rank_key(s, score))["correct"]
                                       for row in rows) / n, 4),
        "mean_reward": round(sum(s["reward"] for s in every) / len(every), 4),
        "reward_onpolicy_pairs": pairs,
        "sft_examples": sum(row["accepted"] for row in rows),
        "dpo_pairs": sum(len(row["rejected"]) for row in rows),
    }
    if accuracy is not None:
        metrics["reward_onpolicy_accuracy"] = accuracy
    for member in dict.fromkeys(s["member"] for s in every):
        mine = [s["correct"] for s in every if s["member"] == member]
        metrics[f"correct_rate_{member}"] = round(sum(mine) / len(mine), 4)
    return metrics


if __name__ == "__main__":
    main(SPEC, run)
