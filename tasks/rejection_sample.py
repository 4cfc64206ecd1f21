"""rejection_sample: K samples per prompt from the annealed base, each scored by the reward model;
the best becomes SFT data, and best vs worst a DPO pair (Llama 3's post-training loop). A sample
that runs out of tokens before it ends is kept as it is: the reward model judges it incomplete."""

from dataclasses import dataclass

import torch
from tqdm import tqdm

from herd.config import ParamError, non_negative, positive
from herd.data.io import read_table, write_jsonl
from herd.data.tokens import load_tokenizer
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.generate import sample
from herd.post.preferences import final_answer, math_problems
from herd.post.scoring import score_responses
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig


@dataclass
class RejectionSampleConfig:
    prompts: int = 160
    k: int = 4
    max_new_tokens: int = 96
    temperature: float = 0.8
    top_k: int = 50
    verifier_bonus: float = 1.0  # added to the reward of a sample whose final answer checks out

    def check(self, root) -> None:
        positive(self, "prompts", "max_new_tokens")
        non_negative(self, "temperature", "top_k", "verifier_bonus")
        if self.k < 2:
            raise ParamError("k", "needs at least 2 samples per prompt to pick a best and a worst")


SPEC = StageSpec(__doc__, inputs=("policy", "reward", "filtered"),
                 params={"seed": int, "train": TrainConfig, "rejection_sample": RejectionSampleConfig},
                 headline=("best_correct_rate",))


def run(st: StageRun) -> None:
    cfg, precision = st.cfg.rejection_sample, st.cfg.train.precision
    policy = load_checkpoint(st.input("policy") / "model")
    judge = load_checkpoint(st.input("reward") / "model")
    fmt = ChatFormat(load_tokenizer(st.input("policy") / "model"))
    problems = math_problems(read_table(st.input("filtered") / "train"))[: cfg.prompts]
    g = torch.Generator().manual_seed(st.seed)
    rows, best_scores, correct_best, correct_any = [], [], 0, 0
    for problem in tqdm(problems, desc="rejection_sample", unit="prompt", mininterval=2):
        samples = sample(policy, fmt.base_prompt(problem["question"]), cfg.k, cfg.max_new_tokens,
                         cfg.temperature, cfg.top_k, fmt.stops, g, precision)
        texts = [fmt.decode(s) for s in samples]
        correct = [final_answer(t) == problem["answer"] for t in texts]
        scores = score_responses(judge, fmt, [(problem["question"], t) for t in texts], precision=precision)
        # A verifiable answer lets a checker vote with the reward model (best-of-K with a verifier).
        scores = [s + cfg.verifier_bonus * c for s, c in zip(scores, correct, strict=True)]
        order = sorted(range(cfg.k), key=lambda i: -scores[i])
        best, worst = order[0], order[-1]
        rows.append({"id": problem["id"], "prompt": problem["question"], "answer": problem["answer"],
                     "samples": texts, "scores": scores, "correct": correct,
                     "best": texts[best], "worst": texts[worst],
                     "best_score": scores[best], "worst_score": scores[worst]})
        best_scores.append(scores[best])
        correct_best += correct[best]
        correct_any += any(correct)
    write_jsonl(rows, st.out / "samples.jsonl")
    n = len(rows)
    st.metrics.update({
        "prompts": n, "k": cfg.k,
        "mean_best_score": round(sum(best_scores) / n, 4),
        "mean_score": round(sum(sum(r["scores"]) / cfg.k for r in rows) / n, 4),
        "best_correct_rate": round(correct_best / n, 4),
        "any_correct_rate": round(correct_any / n, 4),
        "mean_sample_correct_rate": round(sum(sum(r["correct"]) for r in rows) / (n * cfg.k), 4),
    })


if __name__ == "__main__":
    main(SPEC, run)
