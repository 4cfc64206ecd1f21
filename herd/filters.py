"""Corpus quality rules: normalisation, Gopher/C4/FineWeb-style heuristics, exact deduplication,
n-gram decontamination and domain mixing. Each rule returns the name of the check that failed, so
every rejected document carries its reason."""

import hashlib
import random
import re
import unicodedata
from collections import Counter

STOP_WORDS = frozenset(
    "the be to of and a in that have has had is are was were it for not on with he she as you do does at "
    "this but his her by from they we how many what which each there their then so if or an".split()
)
BOILERPLATE = re.compile(
    r"^(home\s*\|.*|skip to (main )?content|menu|search( this site)?|.*\b(use|accept|allow)( all)? cookies\b.*|"
    r"share on .*|"
    r".*all rights reserved.*|.*privacy policy.*|subscribe to our newsletter.*|log ?in|sign up)$",
    re.IGNORECASE,
)
MOJIBAKE = re.compile("[ÃÂâ][\u0080-\u00bf\u20ac\u201a-\u201e\u2020-\u2022\u2122\u0152\u0153\u0160\u0161]|Ã.")
LOREM_WORDS = frozenset("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
                        "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud".split())
WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Unicode NFC and boilerplate lines (navigation, cookie banners, footers) removed."""
    text = unicodedata.normalize("NFC", text)
    lines = [line for line in text.split("\n") if not BOILERPLATE.match(line.strip())]
    return "\n".join(lines).strip()


def prose_rule_failed(text: str, cfg, min_alpha_word_frac: float) -> str | None:
    """The first heuristic a natural-language document fails, or None. Math passes a lower
    alphabetic-word threshold: worked solutions are full of numbers and operators."""
    words = text.split()
    n = len(words)
    if n < cfg.min_words:
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    if len(MOJIBAKE.findall(text)) > max(2, n // 100):
        return "mojibake"
    if sum(not c.isascii() for c in text) > cfg.max_nonascii_frac * len(text):
        return "non_ascii"
    mean_len = sum(len(w) for w in words) / n
    if not cfg.min_mean_word_len <= mean_len <= cfg.max_mean_word_len:
        return "mean_word_length"
    if (text.count("#") + text.count("...") + text.count("$")) > cfg.max_symbol_ratio * n:
        return "symbol_ratio"
    if sum(any(c.isalpha() for c in w) for w in words) < min_alpha_word_frac * n:
        return "alpha_words"
    lowered = [w.lower().strip(".,;:!?\"'()") for w in words]
    if sum(w in STOP_WORDS for w in lowered) < cfg.min_stopwords:
        return "stop_words"
    if sum(w in LOREM_WORDS for w in lowered) > 0.2 * n:
        return "lorem_ipsum"
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if lines:
        counts = Counter(lines)
        if sum(c for c in counts.values() if c > 1) > cfg.max_duplicate_line_frac * len(lines):
            return "duplicate_lines"
        bullets = sum(line.startswith(("-", "*", "•")) or line.endswith("...") for line in lines)
        if bullets > cfg.max_bullet_line_frac * len(lines):
            return "bullet_lines"
    return None


def code_rule_failed(text: str, cfg) -> str | None:
    """Code has its own rules: prose heuristics (stop words, word length) would drop real source."""
    lines = text.split("\n")
    if len([line for line in lines if line.strip()]) < cfg.code_min_lines:
        return "code_too_short"
    if max(len(line) for line in lines) > cfg.code_max_line_len:
        return "code_long_line"
    if len(MOJIBAKE.findall(text)) > 2:
        return "mojibake"
    return None


def dedup_key(text: str) -> str:
    """Exact-duplicate key: case, punctuation and whitespace differences do not count."""
    return hashlib.sha1(" ".join(WORD.findall(text.lower())).encode()).hexdigest()


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contaminated(text: str, eval_ngrams: set, n: int) -> bool:
    words = WORD.findall(text.lower())
    return any(tuple(words[i : i + n]) in eval_ngrams for i in range(len(words) - n + 1))


def mix(docs: list[dict], weights: dict[str, float], seed: int) -> tuple[list[dict], dict[str, float]]:
    """Sample documents so each domain's share of characters matches its weight, without repeats:
    the domain that runs out first sets the size of the mix. Returns the mix and its realised shares."""
    by_domain: dict[str, list[dict]] = {}
    for doc in docs:
        by_domain.setdefault(doc["domain"], []).append(doc)
    active = {d: w for d, w in weights.items() if w > 0 and by_domain.get(d)}
    total_w = sum(active.values())
    chars = {d: sum(len(x["text"]) for x in by_domain[d]) for d in active}
    budget = min(chars[d] / (w / total_w) for d, w in active.items())
    rng = random.Random(seed)
    mixed = []
    for domain in sorted(active):
        pool = sorted(by_domain[domain], key=lambda x: x["id"])
        rng.shuffle(pool)
        target, taken = budget * active[domain] / total_w, 0
        for doc in pool:
            if taken >= target:
                break
            mixed.append(doc)
            taken += len(doc["text"])
    rng.shuffle(mixed)
    total = sum(len(x["text"]) for x in mixed) or 1
    shares = {d: sum(len(x["text"]) for x in mixed if x["domain"] == d) / total for d in active}
    return mixed, shares
