"""The post-training task: prompts whose answers a verifier checks, and constructed preference pairs.

Two kinds come with the built-in corpus (herd/data/corpus.py): `drill`, short arithmetic on small
numbers that the default base model solves part of the time (so best-of-K has something to pick),
and `math`, the word problems (GSM8K-style, for larger models). A worked solution ends with
"The answer is N.". Exact match reads that number; the verifier also checks every calculation the
solution writes out, so a right answer reached by wrong working is not taken as a right sample.
"""

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from herd.config import ParamError
from herd.data.io import in_holdout, read_jsonl

ANSWER = re.compile(r"The answer is (-?\d+)\.")
_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_OPERATOR = r"(?:\s*[-+*/×]\s*|\s+x\s+)"
# A calculation written out: numbers joined by + - * / × (or x between spaces), "=", a number
# (GSM8K's <<48/2=24>> included). Not one that goes on past its value (`= 1/4`, `= 46 - 4`, a
# chain the next calculation checks) or starts inside a mixed number (`1 1/2`) or a longer expression
# (`X*6 + 9`, `(1/5) * 425`).
CALCULATION = re.compile(rf"(?<![\w.,)+*/×-])(?<![\d)+*/×-]\s)(-?{_NUMBER}(?:{_OPERATOR}{_NUMBER})+)"
                         rf"\s*=\s*\$?(-?{_NUMBER})(?!\d|\.\d|{_OPERATOR}\d|\s\d+/)")
KINDS = ("drill", "math")


@dataclass
class TaskConfig:
    kind: str = "drill"  # drill: short arithmetic on small numbers; math: word problems

    def check(self, root) -> None:
        if self.kind not in KINDS:
            raise ParamError("kind", f"must be one of {', '.join(KINDS)}, got '{self.kind}'")


def final_answer(text: str) -> str | None:
    m = ANSWER.search(text)
    return m.group(1) if m else None


def exact_match(text: str, answer: str) -> bool:
    """Whether a response's final answer is the right one."""
    return final_answer(text) == answer


def evaluate(expression: str) -> Fraction:
    """The exact value of numbers joined by + - * / (× or x for *), as CALCULATION finds them (a leading
    minus allowed): * and / before + and -. ZeroDivisionError on a division by zero."""
    body = expression.strip()
    numbers = [Fraction(n.replace(",", "")) for n in re.findall(_NUMBER, body)]
    operators = re.findall(r"[-+*/×x]", body.removeprefix("-"))  # numbers hold no sign: the rest are operators
    total, sign, term = Fraction(0), -1 if body.startswith("-") else 1, numbers[0]
    for op, number in zip(operators, numbers[1:], strict=True):
        if op in "*×x":
            term *= number
        elif op == "/":
            term /= number
        else:
            total, sign, term = total + sign * term, 1 if op == "+" else -1, number
    return total + sign * term


def calculation_holds(expression: str, stated: str) -> bool:
    """Whether `expression` equals `stated`, up to the rounding of the decimals `stated` shows."""
    try:
        value = evaluate(expression)
    except ZeroDivisionError:
        return False
    stated = stated.replace(",", "")
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    return abs(value - Fraction(stated)) <= Fraction(1, 2 * 10**decimals)


def calculations_hold(text: str) -> bool:
    """Whether every calculation the text writes out (`3 + 8 = 11`, `29 * 12 = 348`) is right."""
    return all(calculation_holds(m.group(1), m.group(2)) for m in CALCULATION.finditer(text))


def verify(text: str, answer: str) -> bool:
    """Whether a response is right: its final answer, and every calculation in its working (Llama 3
    drops rejection samples whose reasoning is wrong although their answer is right; here ~14% of
    the drill's right answers were reached by a wrong sum)."""
    return exact_match(text, answer) and calculations_hold(text)


def prompts(kind: str, evals: Path, filtered_rows: list[dict], purpose: str) -> list[dict]:
    """The problems post-training samples on: the drills' prompt split, or the distinct word
    problems of the filtered training corpus (the mixer may repeat documents); half of them (by a
    stable hash) for the reward model's on-policy pairs, the other half for the policy, so the
    reward model is judged on samples of prompts it never saw."""
    pool = read_jsonl(evals / "drill_prompts.jsonl") if kind == "drill" else training_problems(kind, filtered_rows)
    return [p for p in pool if in_holdout(f"reward:{p['id']}", 0.5) == (purpose == "reward")]


def test_problems(kind: str, evals: Path) -> list[dict]:
    """The held-out problems policies are judged on."""
    return read_jsonl(evals / f"{kind}_test.jsonl")


def training_problems(kind: str, rows: list[dict]) -> list[dict]:
    """Distinct problems of `kind` with a worked solution in the filtered training corpus."""
    seen, out = set(), []
    for row in rows:
        if row["id"].startswith(f"{kind}/") and row.get("question") and row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return sorted(out, key=lambda r: r["id"])


def wrong(solution: str, answer: str, rng: random.Random) -> str:
    """The solution with a wrong result, consistently: its last equation and its final answer."""
    bad = str(int(answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
    return re.sub(rf"= {re.escape(answer)}\b", f"= {bad}", solution).replace(f"The answer is {answer}.",
                                                                              f"The answer is {bad}.")


def rejected_variant(problem: dict, other: dict, rng: random.Random) -> tuple[str, str]:
    """A worse response to `problem`: a wrong result, a truncated solution, or another problem's
    solution. Returns (response, kind)."""
    solution = problem["solution"]
    kind = rng.choice(["wrong_answer", "wrong_answer", "truncated", "off_topic"])
    if kind == "wrong_answer":
        return wrong(solution, problem["answer"], rng), kind
    if kind == "truncated":
        words = solution.split()
        return " ".join(words[: max(1, len(words) // 2)]), kind
    return other["solution"], kind


def constructed_pairs(problems: list[dict], n: int, seed: int) -> list[dict]:
    """n preference pairs (a right worked solution over a worse one) in the shape of
    herd/post/preference_data.py."""
    rng = random.Random(f"pairs:{seed}")
    pairs = []
    for i in range(n):
        problem = problems[i % len(problems)]
        other = problems[rng.randrange(len(problems))]
        rejected, kind = rejected_variant(problem, other, rng)
        if rejected == problem["solution"]:
            continue
        pairs.append({"messages": [{"role": "user", "content": problem["question"]}], "chosen": problem["solution"],
                      "rejected": rejected, "source": f"constructed-{kind}", "id": problem["id"]})
    return pairs
