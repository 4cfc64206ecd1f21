"""evaluate_policy: one chat policy (sft, dpo) on held-out checks: the base models' losses,
math exact match in the chat format, and, given a baseline policy, the win rate
over it judged by the reward model."""

import json

from herd.data.io import read_jsonl
from herd.data.tokens import load_tokenizer
from herd.evals.measures import EvaluateConfig, model_measures
from herd.evals.preference import answers, win_rate
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("policy", "judge", "tokenizer", "corpus"), optional=("baseline",),
                 params={"train": TrainConfig, "evaluate": EvaluateConfig},
                 headline=("val_loss_mean_len*", "math_exact_match", "win_rate_vs_baseline"))


def run(st: StageRun) -> None:
    cfg, precision = st.cfg.evaluate, st.cfg.train.precision
    st.manifest["evaluates"] = st.upstream_manifest("policy")["stage"]
    fmt = ChatFormat(load_tokenizer(st.input("policy") / "model"))
    policy = load_checkpoint(st.input("policy") / "model")
    st.metrics.update(model_measures(st, policy, fmt, chat=True))
    if "baseline" not in st.inputs:
        return
    baseline = st.upstream_manifest("baseline")["stage"]
    questions = [p["question"] for p in read_jsonl(st.input("corpus") / "evals" / "math_test.jsonl")]
    questions = questions[: cfg.win_rate_prompts]
    new = answers(policy, fmt, questions, cfg.max_new_tokens, precision)
    old = answers(load_checkpoint(st.input("baseline") / "model"), fmt, questions, cfg.max_new_tokens, precision)
    judge = load_checkpoint(st.input("judge") / "model")
    st.metrics["win_rate_vs_baseline"] = win_rate(judge, fmt, questions, new, old, precision)
    st.manifest["baseline"] = baseline
    examples = [{"prompt": q, baseline: o, st.manifest["evaluates"]: n} for q, n, o in zip(questions, new, old,
                                                                                          strict=True)]
    (st.out / "examples.json").write_text(json.dumps(examples[:10], indent=2) + "\n")


if __name__ == "__main__":
    main(SPEC, run)
