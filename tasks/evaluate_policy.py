"""evaluate_policy: one chat policy (sft, dpo) on held-out checks: the base models' losses, exact
match on the word problems and on the post-training task, and, given a baseline model, the win rate
over it on the task's held-out prompts, judged by the verifier and by the reward model. For a
registered policy it decides the champion: the alias moves to the new version only when its task
exact match beats the current champion's on the same problems; the decision and both numbers are
tagged on the version."""

import json

from herd.data.tokens import load_tokenizer
from herd.evals.measures import EvaluateConfig, math_exact_match, model_measures
from herd.evals.preference import answers, win_rate
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.task import TaskConfig, test_problems, verify
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig

# judged_after: the previous round's evaluation, read for nothing but its order (champion decisions in turn).
SPEC = StageSpec(__doc__, inputs=("policy", "judge", "tokenizer", "corpus"), optional=("baseline", "judged_after"),
                 params={"train": TrainConfig, "task": TaskConfig, "evaluate": EvaluateConfig},
                 headline=("val_loss_mean_len*", "task_exact_match"))


def run(st: StageRun) -> None:
    cfg = st.cfg.evaluate
    upstream = st.upstream_manifest("policy")
    st.manifest["evaluates"] = upstream["stage"]
    if "control_of" in upstream:  # a control is judged beside the stage it controls
        st.manifest["control_of"] = upstream["control_of"]
    fmt = ChatFormat(load_tokenizer(st.input("policy") / "model"))
    policy = load_checkpoint(st.input("policy") / "model")
    st.metrics.update(model_measures(st, policy, fmt, chat=True))
    problems = test_problems(st.cfg.task.kind, st.input("corpus") / "evals")
    if "baseline" in st.inputs:
        compare(st, fmt, policy, problems[: cfg.win_rate_prompts])
    gate_champion(st, problems[: cfg.task_problems])


def compare(st: StageRun, fmt: ChatFormat, policy, problems: list[dict]) -> None:
    """Win rates over the baseline (a base model answers from its pretraining prompt)."""
    cfg, precision, compile = st.cfg.evaluate, st.cfg.train.precision, st.cfg.runtime.generate.compile
    baseline = st.upstream_manifest("baseline")
    questions = [p["question"] for p in problems]
    new = answers(policy, fmt, questions, cfg.max_new_tokens, precision, compile=compile)
    old = answers(load_checkpoint(st.input("baseline") / "model"), fmt, questions, cfg.max_new_tokens, precision,
                  chat=baseline.get("model_kind") == "policy", compile=compile)
    judge = load_checkpoint(st.input("judge") / "model")
    st.metrics["win_rate_reward"] = win_rate(judge, fmt, questions, new, old, precision)
    right = [(verify(n, p["answer"]), verify(o, p["answer"])) for n, o, p in zip(new, old, problems, strict=True)]
    st.metrics["win_rate_verifier"] = round(sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in right)
                                            / len(right), 4)
    st.manifest["baseline"] = baseline["stage"]
    examples = [{"prompt": q, "answer": p["answer"], baseline["stage"]: o, st.manifest["evaluates"]: n}
                for q, n, o, p in zip(questions, new, old, problems, strict=True)]
    (st.out / "examples.json").write_text(json.dumps(examples[:10], indent=2) + "\n")


def gate_champion(st: StageRun, problems: list[dict]) -> None:
    """Move the registry alias to this policy's version only if it beats the champion."""
    tcfg = st.cfg.runtime.tracking
    if not tcfg.register:
        return
    from herd.runtime import registry

    version = registry.version_of_run(tcfg.policy_model, st.upstream_manifest("policy")["mlflow_run_id"])
    if version is None:  # not a registered policy (sft)
        return
    score = st.metrics["task_exact_match"]
    champion = registry.holder(tcfg.policy_model, tcfg.alias)
    if champion is None or champion.version == version.version:
        best = None
    else:  # the champion may come from another run, with its own tokenizer
        folder = registry.checkpoint_of(tcfg.policy_model, champion.version)
        best = math_exact_match(load_checkpoint(folder), ChatFormat(load_tokenizer(folder)), problems, True,
                                st.cfg.evaluate.max_new_tokens, st.cfg.train.precision, st.cfg.runtime.generate.compile)
    promote = best is None or score > best
    registry.crown(tcfg.policy_model, version.version, tcfg.alias, promote, {
        "herd.champion.decision": "promoted" if promote else "kept",
        "herd.champion.task_exact_match": str(score),
        "herd.champion.previous_version": "" if champion is None else champion.version,
        "herd.champion.previous_task_exact_match": "" if best is None else str(best),
        "herd.champion.judged_by": st.name,
    })
    st.metrics["promoted"] = int(promote)
    st.manifest["champion"] = {"version": version.version, "promoted": promote, "task_exact_match": score,
                               "previous_version": None if champion is None else champion.version,
                               "previous_task_exact_match": best}


if __name__ == "__main__":
    main(SPEC, run)
