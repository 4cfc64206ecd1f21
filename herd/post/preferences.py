"""Verifiable preference pairs from worked math problems: a small reward model can learn
correctness of the final answer, completeness and relevance, so the signal is real at CPU scale."""

import random
import re

ANSWER = re.compile(r"The answer is (-?\d+)\.")


def final_answer(text: str) -> str | None:
    m = ANSWER.search(text)
    return m.group(1) if m else None


def rejected_variant(problem: dict, other: dict, rng: random.Random) -> tuple[str, str]:
    """A worse response to `problem`: a wrong final answer, a truncated solution, or an answer to
    another question. Returns (response, kind)."""
    solution = problem["solution"]
    kind = rng.choice(["wrong_answer", "truncated", "off_topic"])
    if kind == "wrong_answer":
        wrong = int(problem["answer"]) + rng.choice([-10, -2, -1, 1, 2, 10])
        return ANSWER.sub(f"The answer is {wrong}.", solution), kind
    if kind == "truncated":
        words = solution.split()
        return " ".join(words[: max(1, len(words) // 2)]), kind
    return other["solution"], kind


def preference_pairs(problems: list[dict], n: int, seed: int) -> list[dict]:
    rng = random.Random(f"pairs:{seed}")
    pairs = []
    for i in range(n):
        problem = problems[i % len(problems)]
        other = problems[rng.randrange(len(problems))]
        rejected, kind = rejected_variant(problem, other, rng)
        pairs.append({"prompt": problem["question"], "chosen": problem["solution"], "rejected": rejected,
                      "kind": kind, "id": problem["id"]})
    return pairs


def math_problems(rows: list[dict]) -> list[dict]:
    """Distinct math documents that carry a structured question (the mixer may repeat documents)."""
    seen, out = set(), []
    for row in rows:
        if row.get("domain") == "math" and row.get("question") and row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return sorted(out, key=lambda r: r["id"])
