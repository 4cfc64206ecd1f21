"""Generated long-context tasks, the synthetic long-context data of Llama 3.1 and AFM: a haystack of
real text with facts hidden at a chosen depth and a question at the end that only those facts answer.

- passkey: one five-digit key hidden in the text (needle in a haystack);
- kv: the whole context is a list of key-value pairs, one key is asked;
- multi_needle: several named numbers hidden at spread depths, all asked in order;
- qa: a passage of the document is quoted, the text that follows it is asked.

Tasks are built on token ids: the haystack is a stretch of a token stream (the train split for
training, the validation split for evaluation), so a task is exactly as long as asked. Everything
depends only on the random generator passed in.
"""

import random
from dataclasses import dataclass

import numpy as np

from herd.config import ParamError

TASKS = ("passkey", "kv", "multi_needle", "qa")
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam"]


@dataclass
class LongTask:
    kind: str
    prompt: list[int]  # the haystack with its needles, then the question
    answer: list[int]  # what the model should continue with
    depth: float  # where the (first) needle sits, 0 = start of the context, 1 = just before the question

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.answer


class DoesNotFit(ValueError):
    """A task kind needs more tokens than the length asked (its needles and question alone)."""


def check_tasks(weights: dict[str, float], key: str) -> None:
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ParamError(key, f"unknown task {unknown[0]!r}; the long-context tasks are {', '.join(TASKS)}")
    if any(w < 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
        raise ParamError(key, "weights must be non-negative with a positive sum")


class TaskMaker:
    """`make(kind, length, depth, rng)`: a task of exactly `length` tokens (prompt + answer) whose
    needle sits at `depth` of the context, with haystack text from `haystack` (a token stream)."""

    def __init__(self, tok, haystack: np.ndarray):
        self.tok, self.haystack = tok, haystack
        self._cache: dict[str, list[int]] = {}

    def enc(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok.encode(text).ids
        return self._cache[text]

    def hay(self, n: int, rng: random.Random) -> list[int]:
        if n > len(self.haystack):
            raise ValueError(f"a haystack of {n} tokens needs a longer token stream ({len(self.haystack)} tokens)")
        start = rng.randrange(0, len(self.haystack) - n + 1)
        return self.haystack[start : start + n].tolist()

    def make(self, kind: str, length: int, depth: float, rng: random.Random) -> LongTask:
        return getattr(self, kind)(length, depth, rng)

    def _fill(self, kind, length, needles: list[tuple[float, list[int]]], question, answer, rng):
        """Haystack around the needles (each at its depth of the haystack), then question and answer."""
        budget = length - len(question) - len(answer) - sum(len(n) for _, n in needles)
        if budget < 1:
            raise DoesNotFit(f"a {kind} task does not fit into {length} tokens: use longer sequences or leave "
                             f"{kind} out of the task mix")
        hay = self.hay(budget, rng)
        for d, needle in sorted(needles, key=lambda x: -x[0]):  # deepest first: earlier offsets stay valid
            at = round(d * budget)
            hay[at:at] = needle
        return LongTask(kind, hay + question, answer, needles[0][0])

    def passkey(self, length, depth, rng) -> LongTask:
        key = str(rng.randint(10000, 99999))
        needle = self.enc(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        return self._fill("passkey", length, [(depth, needle)], self.enc("\n\nWhat is the pass key? The pass key is"),
                          self.enc(f" {key}"), rng)

    def multi_needle(self, length, depth, rng, count: int = 3) -> LongTask:
        names = rng.sample(NAMES, count)
        values = [str(rng.randint(100, 999)) for _ in names]
        depths = [depth + (1 - depth) * i / count for i in range(count)]  # the first at `depth`, the rest after
        needles = [(d, self.enc(f" The magic number of {n} is {v}. "))
                   for d, n, v in zip(depths, names, values, strict=True)]
        question = self.enc(f"\n\nThe magic numbers of {', '.join(names)}, in this order, are")
        answer = self.enc(" " + ", ".join(values))
        return self._fill("multi_needle", length, needles, question, answer, rng)

    def kv(self, length, depth, rng) -> LongTask:
        def pair() -> tuple[str, str]:
            return f"{rng.getrandbits(24):06x}", str(rng.randint(10000, 99999))

        key, value = pair()
        question = self.enc(f"\n\nThe value of key {key} is")
        answer = self.enc(f" {value}")
        lines, used = [], len(question) + len(answer)
        asked = self.enc(f"{key}: {value}\n")
        while True:
            line = self.enc("%s: %s\n" % pair())
            if used + len(line) + len(asked) > length:
                break
            lines.append(line)
            used += len(line)
        lines.insert(round(depth * len(lines)), asked)
        context = [t for line in lines for t in line]
        if len(context) + len(question) + len(answer) > length:
            raise DoesNotFit(f"a kv task does not fit into {length} tokens: use longer sequences or leave kv out of "
                             f"the task mix")
        pad = self.hay(length - len(context) - len(question) - len(answer), rng)
        return LongTask("kv", pad + context + question, answer, depth)

    def qa(self, length, depth, rng, quote: int = 8, span: int = 12) -> LongTask:
        question_head, question_tail = self.enc('\n\nIn the text above, what follows "'), self.enc('"? It is:')
        budget = length - len(question_head) - quote - len(question_tail) - span
        if budget < quote + span:
            raise DoesNotFit(f"a qa task does not fit into {length} tokens: use longer sequences or leave qa out "
                             f"of the task mix")
        hay = self.hay(budget, rng)
        at = min(round(depth * budget), budget - quote - span)
        quoted, answer = hay[at : at + quote], hay[at + quote : at + quote + span]
        prompt = hay + question_head + quoted + question_tail
        return LongTask("qa", prompt, answer, depth)


class TaskRows:
    """Training rows of generated tasks for a window sampler: `count` per batch, each `seq_len` + 1
    tokens, kinds drawn to `weights`, needles at uniformly random depths; a pure function of
    (seed, step) like the windows, so a resumed run sees the same rows."""

    def __init__(self, maker: TaskMaker, weights: dict[str, float], count: int, seed: str):
        self.maker, self.count, self.seed = maker, count, seed
        self.kinds = [k for k in TASKS if weights.get(k, 0) > 0]
        self.weights = [weights[k] for k in self.kinds]

    def __call__(self, step: int, seq_len: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{step}")
        return [self.maker.make(kind, seq_len + 1, rng.random(), rng).ids
                for kind in rng.choices(self.kinds, self.weights, k=self.count)]


def haystack(streams: dict[str, np.ndarray]) -> np.ndarray:
    """The text tasks hide their needles in: the long documents and prose of a split's streams."""
    return np.concatenate([streams[d] for d in ("long", "prose") if d in streams] or list(streams.values()))
