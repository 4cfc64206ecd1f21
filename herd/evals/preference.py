"""Held-out measures that need a judge: the reward model's accuracy on preference pairs, and the
win rate of one policy's answers over another's."""

from herd.post.generate import greedy
from herd.post.scoring import score_responses


def reward_accuracy(judge, fmt, pairs: list[dict], precision: str, seq_len: int = 512) -> float:
    """How often the reward model prefers the chosen response of a held-out pair (the shape of
    herd/post/preference_data.py) to the rejected one."""
    chosen = score_responses(judge, fmt, [(p["messages"], p["chosen"]) for p in pairs], seq_len, precision=precision)
    rejected = score_responses(judge, fmt, [(p["messages"], p["rejected"]) for p in pairs], seq_len,
                               precision=precision)
    return round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs), 4)


def answers(model, fmt, questions: list[str], max_new: int, precision: str, chat: bool = True,
            compile: bool = False) -> list[str]:
    """Greedy answers, in the chat format or (a base model) from the pretraining prompt."""
    encode, answer = (fmt.prompt, fmt.decode) if chat else (fmt.base_prompt, fmt.base_answer)
    return [answer(o) for o in greedy(model, [encode(q) for q in questions], max_new, fmt.stops, precision,
                                      compile=compile)]


def win_rate(judge, fmt, questions: list[str], new: list[str], old: list[str], precision: str) -> float:
    """Share of questions where the reward model scores `new` above `old` (ties count half)."""
    a = score_responses(judge, fmt, list(zip(questions, new, strict=True)), precision=precision)
    b = score_responses(judge, fmt, list(zip(questions, old, strict=True)), precision=precision)
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))
    return round(wins / len(questions), 4)
