"""Held-out measures that need a judge: the reward model's accuracy on preference pairs, and the
win rate of one policy's answers over another's."""

from herd.evals.measures import greedy
from herd.post.preferences import preference_pairs
from herd.post.scoring import score_responses


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
