"""evaluate: every stage's model on held-out checks, in one table.

Base models (pretrain, extend, anneal): loss by domain at the short and the long context, passkey
retrieval, math exact match. Policies (sft, dpo): math exact match in the chat format, and the
win rate of dpo over sft judged by the reward model. The reward model: accuracy on held-out pairs
made from the test problems.
"""

import json

import torch
from tqdm import tqdm

from herd.chat import ChatFormat
from herd.data import read_jsonl
from herd.generate import sample
from herd.lm_stage import eval_losses
from herd.model import load_checkpoint
from herd.plots import grouped_bars
from herd.preferences import final_answer, preference_pairs
from herd.scoring import score_responses
from herd.stage import main, stage_run
from herd.tokens import load_streams, load_tokenizer

BASES, POLICIES = ("pretrain", "extend", "anneal"), ("sft", "dpo")


def greedy(model, prompt_ids: list[int], max_new: int, stop_ids: tuple[int, ...], precision: str) -> list[int]:
    return sample(model, prompt_ids, 1, max_new, 0.0, 0, stop_ids, precision=precision)[0]


def math_exact_match(model, fmt, problems, chat: bool, max_new: int, precision: str) -> float:
    hits = 0
    for p in problems:
        prompt = fmt.prompt(p["question"]) if chat else fmt.base_prompt(p["question"])
        text = fmt.decode(greedy(model, prompt, max_new, fmt.stops, precision))
        hits += final_answer(text) == p["answer"]
    return round(hits / len(problems), 4)


def passkey_accuracy(model, tok, docs, precision: str) -> float:
    hits = 0
    for doc in docs:
        out = tok.decode(greedy(model, tok.encode(doc["text"]).ids, 6, (), precision))
        hits += doc["answer"] in out.replace(" ", "")
    return round(hits / len(docs), 4)


def run() -> None:
    stages = ["corpus", "tokenizer", *BASES, "reward", *POLICIES]
    with stage_run("evaluate", inputs=stages) as st:
        cfg, precision = st.cfg.evaluate, st.cfg.train.precision
        tokens, evals = st.input("tokenizer"), st.input("corpus") / "evals"
        tok = load_tokenizer(tokens)
        fmt = ChatFormat(tok)
        val = load_streams(tokens, "validation")
        problems = read_jsonl(evals / "math_test.jsonl")
        passkeys = read_jsonl(evals / "passkey_test.jsonl")[: cfg.passkey_docs]
        short = st.upstream_manifest("pretrain")["params"]["pretrain"]["seq_len"]
        long = st.upstream_manifest("extend")["params"]["extend"]["seq_len"]
        table: dict[str, dict[str, float]] = {}
        losses: dict[str, dict[str, float]] = {}
        for stage in tqdm([*BASES, *POLICIES], desc="evaluate", unit="model"):
            model = load_checkpoint(st.input(stage) / "model")
            row = {}
            with torch.no_grad():
                short_losses = eval_losses(st, model, val, short)
                long_losses = eval_losses(st, model, {"long": val["long"]}, long) if "long" in val else {}
            losses[stage] = {k: v for k, v in short_losses.items() if k != "mean"}
            row[f"val_loss_len{short}"] = short_losses["mean"]
            if "long" in long_losses:
                row[f"val_loss_long_len{long}"] = long_losses["long"]
            row["passkey_accuracy"] = passkey_accuracy(model, tok, passkeys, precision)
            row["math_exact_match"] = math_exact_match(model, fmt, problems[: cfg.math_problems],
                                                       stage in POLICIES, cfg.max_new_tokens, precision)
            table[stage] = row

        judge = load_checkpoint(st.input("reward") / "model")
        pairs = preference_pairs(problems, len(problems), st.seed)
        chosen = score_responses(judge, fmt, [(p["prompt"], p["chosen"]) for p in pairs], precision=precision)
        rejected = score_responses(judge, fmt, [(p["prompt"], p["rejected"]) for p in pairs], precision=precision)
        reward_accuracy = round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs), 4)

        questions = [p["question"] for p in problems[: cfg.win_rate_prompts]]
        responses = {}
        for stage in POLICIES:
            model = load_checkpoint(st.input(stage) / "model")
            responses[stage] = [fmt.decode(greedy(model, fmt.prompt(q), cfg.max_new_tokens, fmt.stops, precision))
                                for q in questions]
        new, old = (score_responses(judge, fmt, list(zip(questions, responses[s], strict=True)), precision=precision)
                    for s in ("dpo", "sft"))
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(new, old, strict=True))
        win_rate = round(wins / len(new), 4)

        for stage, row in table.items():
            for key, value in row.items():
                st.metrics[f"{stage}.{key}"] = value
        st.metrics["reward.heldout_accuracy"] = reward_accuracy
        st.metrics["dpo.win_rate_vs_sft"] = win_rate
        (st.out / "report.md").write_text(report(table, reward_accuracy, win_rate))
        (st.out / "examples.json").write_text(json.dumps(
            [{"prompt": q, "sft": s, "dpo": d}
             for q, s, d in zip(questions, responses["sft"], responses["dpo"], strict=True)][:10], indent=2) + "\n")
        grouped_bars(losses, f"held-out loss by domain (context {short})", "loss (nats/token)",
                     st.out / "loss_by_domain.png")
        import mlflow

        mlflow.log_artifact(str(st.out / "report.md"))
        mlflow.log_artifact(str(st.out / "loss_by_domain.png"))


def report(table: dict[str, dict[str, float]], reward_accuracy: float, win_rate: float) -> str:
    columns = list(next(iter(table.values())))
    lines = ["# Herd evaluation", "", "| stage | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for stage, row in table.items():
        lines.append(f"| {stage} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in columns) + " |")
    lines += ["", f"- reward model accuracy on held-out test-problem pairs: {reward_accuracy:.4f}",
              f"- dpo win rate vs sft (judged by the reward model): {win_rate:.4f}", "",
              "![loss by domain](loss_by_domain.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(run)
