"""Corpus quality rules: normalisation, Gopher/C4/FineWeb-style heuristics, exact-duplicate keys,
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
# C4 / FineWeb boilerplate: navigation, cookie banners, share bars, legal footers.
BOILERPLATE = re.compile(
    r"^(home\s*\|.*|skip to (main )?content|menu|search( this site)?|.*\b(use|accept|allow)( all)? cookies\b.*|"
    r".*\bcookie (policy|settings)\b.*|share (on|this).*|.*all rights reserved.*|.*privacy policy.*|"
    r".*terms of (use|service).*|subscribe to our newsletter.*|log ?in|sign (up|in)|.*javascript.*|"
    r"(facebook|twitter|linkedin|pinterest|email|print)( \| .*)?|advertisement|follow us.*|related (posts|articles))$",
    re.IGNORECASE,
)
MOJIBAKE = re.compile("[ÃÂâ][\u0080-\u00bf\u20ac\u201a-\u201e\u2020-\u2022\u2122\u0152\u0153\u0160\u0161]|Ã.")
LOREM_WORDS = frozenset("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
                        "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud".split())
PLACEHOLDER = re.compile(r"lorem ipsum|\{\{|\}\}|\[insert [^\]]*\]|placeholder text|coming soon", re.IGNORECASE)
WORD = re.compile(r"\w+")
TERMINAL = (".", "!", "?", '"', "'", "”", "’", ":", ")")


def fix_mojibake(text: str) -> str:
    """UTF-8 bytes decoded as Latin-1/CP1252 ("cafÃ©") are re-decoded when that removes every
    mojibake marker; what cannot be fixed is left for the mojibake rule to reject."""
    original = text
    for _ in range(3):  # text can be mis-decoded more than once
        if not MOJIBAKE.search(text):
            return text
        for codec in ("cp1252", "latin-1"):
            try:
                text = text.encode(codec).decode("utf-8")
                break
            except (UnicodeEncodeError, UnicodeDecodeError):
                continue
        else:
            return original
    return text if not MOJIBAKE.search(text) else original


def normalise(text: str, web: bool = False) -> str:
    """NFC, mojibake repaired, boilerplate lines removed. Web pages also lose C4's non-sentence
    lines (too short, or not ending in terminal punctuation): menus, bylines, share bars."""
    text = unicodedata.normalize("NFC", fix_mojibake(text))
    lines = [line.rstrip() for line in text.split("\n") if not BOILERPLATE.match(line.strip())]
    if web:
        lines = [line for line in lines if not line.strip() or
                 (len(line.split()) >= 3 and line.strip().endswith(TERMINAL))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _top_ngram_frac(words: list[str], n: int, chars: int) -> float:
    """Share of the `chars` word characters taken by the most frequent repeated word n-gram (Gopher)."""
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(len(w) for w in gram) / max(1, chars)


def _dup_ngram_frac(words: list[str], n: int, chars: int) -> float:
    """Share of the `chars` word characters in repeats of an earlier word n-gram, repeats not
    overlapping (Gopher)."""
    seen, i, dup = set(), 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i : i + n])
        if gram in seen:
            dup += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup / max(1, chars)


def prose_rule_failed(text: str, cfg, domain: str = "prose") -> str | None:
    """The first heuristic a natural-language document fails, or None. Math passes lower
    alphabetic-word and digit thresholds: worked solutions are full of numbers and operators."""
    words = text.split()
    n = len(words)
    if n < (cfg.web_min_words if domain == "web" else cfg.min_words):
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    if len(MOJIBAKE.findall(text)) > n // 500:  # what fix_mojibake could not repair
        return "mojibake"
    if sum(not c.isascii() for c in text) > cfg.max_nonascii_frac * len(text):
        return "non_ascii"
    mean_len = sum(len(w) for w in words) / n
    if not cfg.min_mean_word_len <= mean_len <= cfg.max_mean_word_len:
        return "mean_word_length"
    if (text.count("#") + text.count("...") + text.count("$")) > cfg.max_symbol_ratio * n:
        return "symbol_ratio"
    math = domain == "math"
    if not math and sum(c.isdigit() for c in text) > cfg.max_digit_frac * len(text):
        return "digit_ratio"
    alpha = cfg.math_min_alpha_word_frac if math else cfg.min_alpha_word_frac
    if sum(any(c.isalpha() for c in w) for w in words) < alpha * n:
        return "alpha_words"
    lowered = [w.lower().strip(".,;:!?\"'()") for w in words]
    if sum(w in STOP_WORDS for w in lowered) < cfg.min_stopwords:
        return "stop_words"
    if sum(w in LOREM_WORDS for w in lowered) > 0.2 * n or PLACEHOLDER.search(text):
        return "placeholder_text"
    # Repeats beyond the first occurrence, as Gopher counts them.
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) - len(set(lines)) > cfg.max_duplicate_line_frac * len(lines):
        return "duplicate_lines"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) - len(set(paragraphs)) > cfg.max_duplicate_paragraph_frac * len(paragraphs):
        return "duplicate_paragraphs"
    if sum(line.startswith(("-", "*", "•")) for line in lines) > cfg.max_bullet_line_frac * len(lines):
        return "bullet_lines"
    if sum(line.endswith(("...", "…")) for line in lines) > cfg.max_ellipsis_line_frac * len(lines):
        return "ellipsis_lines"
    if n < cfg.repetition_min_words:  # in a short text one repeated name is a large share
        return None
    chars = sum(len(w) for w in lowered)
    for k, limit in cfg.max_top_ngram_frac.items():
        if _top_ngram_frac(lowered, k, chars) > limit:
            return f"top_{k}gram"
    for k, limit in cfg.max_duplicate_ngram_frac.items():
        if _dup_ngram_frac(lowered, k, chars) > limit:
            return f"duplicate_{k}gram"
    return None


def code_rule_failed(text: str, cfg) -> str | None:
    """Code has its own rules: prose heuristics (stop words, word length) would drop real source."""
    lines = text.split("\n")
    if len([line for line in lines if line.strip()]) < cfg.code_min_lines:
        return "code_too_short"
    if max(len(line) for line in lines) > cfg.code_max_line_len:
        return "code_long_line"
    if sum(c.isalnum() for c in text) < 0.25 * len(text):
        return "code_alnum_ratio"
    if len(MOJIBAKE.findall(text)) > 2:
        return "mojibake"
    return None


def rule_failed(text: str, domain: str, cfg) -> str | None:
    return code_rule_failed(text, cfg) if domain == "code" else prose_rule_failed(text, cfg, domain)


def dedup_key(text: str) -> str:
    """Exact-duplicate key: case, punctuation and whitespace differences do not count."""
    return hashlib.sha1(" ".join(WORD.findall(text.lower())).encode()).hexdigest()


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminate(text: str, eval_ngrams: set, n: int, mode: str) -> tuple[str | None, int]:
    """(text, hits): unchanged with 0 hits when no line shares an n-gram with an eval set; otherwise
    the contaminated lines are cut (mode "cut") or the document is dropped (None, mode "drop")."""
    if not eval_ngrams:
        return text, 0
    words = WORD.findall(text.lower())
    if not any(tuple(words[i : i + n]) in eval_ngrams for i in range(len(words) - n + 1)):
        return text, 0
    if mode == "drop":
        return None, 1
    # An eval item may span lines: a line is cut when it is part of a matching window.
    lines = text.split("\n")
    owner = [i for i, line in enumerate(lines) for _ in WORD.findall(line.lower())]
    dirty = set()
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in eval_ngrams:
            dirty.update(owner[i : i + n])
    kept = [line for i, line in enumerate(lines) if i not in dirty]
    return "\n".join(kept).strip() or None, len(dirty)


def mix(docs: list[dict], weights: dict[str, float], seed: int, max_repeats: int = 1,
        starved_ratio: float = 0.1) -> tuple[list[tuple[dict, int]], dict[str, float]]:
    """Choose how often each document enters the mix so each domain's share of characters follows
    its weight, each document entering at most `max_repeats` times. The scarcest domain relative to
    its weight sets the size of the mix, except a domain more than 1/starved_ratio times scarcer
    than the best supplied one: it would shrink the whole mix, so it gives all it has instead.
    Returns (document, copies) pairs and the realised shares."""
    by_domain: dict[str, list[dict]] = {}
    for doc in docs:
        by_domain.setdefault(doc["domain"], []).append(doc)
    active = {d: w for d, w in weights.items() if w > 0 and by_domain.get(d)}
    if not active:
        return [], {}
    capacity = {d: max_repeats * sum(x["chars"] for x in by_domain[d]) for d in active}
    supply = {d: capacity[d] / w for d, w in active.items()}
    starved = {d for d in active if supply[d] < starved_ratio * max(supply.values())}
    fed = {d: w for d, w in active.items() if d not in starved}
    budget = min(supply[d] for d in fed) / sum(fed.values())  # characters per unit of weight
    target = {d: capacity[d] if d in starved else budget * w for d, w in active.items()}
    rng = random.Random(seed)
    chosen = []
    for domain in sorted(active):
        pool = sorted(by_domain[domain], key=lambda x: str(x["id"]))
        rng.shuffle(pool)
        taken, copies = 0, Counter()
        for _ in range(max_repeats):
            for doc in pool:
                if taken >= target[domain] * (1 - 1e-9):
                    break
                copies[doc["id"]] += 1
                taken += doc["chars"]
        chosen += [(doc, copies[doc["id"]]) for doc in pool if copies[doc["id"]]]
    total = sum(doc["chars"] * c for doc, c in chosen) or 1
    shares = {d: sum(doc["chars"] * c for doc, c in chosen if doc["domain"] == d) / total for d in active}
    return chosen, shares
