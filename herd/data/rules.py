"""Corpus quality rules: normalisation, Gopher/C4/FineWeb-style heuristics, exact-duplicate keys,
n-gram decontamination and domain mixing. Each rule returns the name of the check that failed, so
every rejected document carries its reason."""

import ast
import hashlib
import random
import re
import unicodedata
import warnings
from collections import Counter

import ftfy

STOP_WORDS = frozenset(
    "the be to of and a in that have has had is are was were it for not on with he she as you do does at "
    "this but his her by from they we how many what which each there their then so if or an".split()
)
# C4 / FineWeb boilerplate: navigation, cookie banners, share bars, legal footers.
BOILERPLATE = re.compile(
    r"^(home\s*\|.*|skip to (main )?content|menu|search( this site)?|.*\b(use|accept|allow)( all)? cookies\b.*|"
    r".*\bcookie (policy|settings)\b.*|share (on|this).*|.*all rights reserved.*|.*privacy policy.*|"
    r".*terms of (use|service).*|subscribe to our newsletter.*|log ?in|sign (up|in)|.*javascript.*|"
    r"(facebook|twitter|linkedin|pinterest|email|print)( \| .*)?|advertisement|follow us.*|related (posts|articles)|"
    # bylines and social counters
    r"(posted|written|published|last updated|updated) (by|on|at) .{1,50}|"
    r".*\b(shared|viewed|read|liked|tweeted) \d[\d,]* times\b.*|\d[\d,]* (comments?|shares|views|likes))$",
    re.IGNORECASE,
)
# What is left of mis-decoded UTF-8 once repair has done what it can ("Ã©", "â€™", "Â" runs).
MOJIBAKE = re.compile("[ÃÂâ][\u0080-\u00bf\u20ac\u201a-\u201e\u2020-\u2022\u2122\u0152\u0153\u0160\u0161]|Ã.")
LOREM_WORDS = frozenset("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
                        "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud".split())
# Unfilled templates. Code legitimately writes "{{" (f-strings, Jinja), so it is held to the rest.
PLACEHOLDER = re.compile(r"lorem ipsum|\[insert [^\]]*\]|placeholder text|coming soon", re.IGNORECASE)
TEMPLATE_FIELD = re.compile(r"\{\{|\}\}")
WORD = re.compile(r"\w+")
TERMINAL = (".", "!", "?", '"', "'", "”", "’", ":", ")")
SENTENCE_END = re.compile(r"[.!?:…][\"'”’)\]]*$")
# Top-level statements that only code makes: a line of prose, a menu ("Home | About") or a table
# ("1, 2, 3") can parse as a bare Python expression, never as one of these.
CODE_STATEMENTS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign,
                   ast.AugAssign, ast.AnnAssign, ast.For, ast.While, ast.If, ast.With, ast.Try, ast.Return)
BRACE_LINE = re.compile(r"[;{}]\s*$|^\s*(//|#include|/\*|\*)")


def repair(text: str) -> str:
    """Mojibake repaired (UTF-8 decoded as Latin-1/CP1252, once or several times over) by ftfy's
    encoding fixer, then NFC. What cannot be repaired (bytes lost on the way) stays for the
    mojibake rule to reject."""
    if not text.isascii():  # ftfy costs time, and ASCII cannot be mis-decoded
        text = ftfy.fix_encoding(text)
    return unicodedata.normalize("NFC", text)


def is_code(text: str) -> bool:
    """Sure that the text is source code: it parses as Python with at least one real statement, or
    most of its lines end or open the way C-family code does (at least three of them)."""
    try:
        with warnings.catch_warnings():  # invalid escapes in prose-like text warn while parsing
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        lines = [line for line in text.split("\n") if line.strip()]
        braced = sum(bool(BRACE_LINE.search(line)) for line in lines)
        return braced >= 3 and braced >= 0.5 * len(lines)
    return any(isinstance(node, CODE_STATEMENTS) for node in tree.body)


def strip_boilerplate(text: str, web: bool = False) -> str:
    """Boilerplate lines removed. Web pages also lose C4's non-sentence lines (too short, or not
    ending in terminal punctuation): menus, bylines, share bars. Never applied to code, whose
    lines are not navigation."""
    lines = [line.rstrip() for line in text.split("\n") if not BOILERPLATE.match(line.strip())]
    if web:
        lines = [line for line in lines if not line.strip() or
                 (len(line.split()) >= 3 and line.strip().endswith(TERMINAL))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def normalise(text: str, web: bool = False) -> str:
    """A natural-language text repaired and stripped of boilerplate."""
    return strip_boilerplate(repair(text), web)


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


def common_rule_failed(text: str, words: list[str], code: bool, cfg) -> str | None:
    """The rules every document passes whatever its route, with the route's thresholds: length,
    mojibake, placeholders, duplicated lines and paragraphs, duplicated n-grams."""
    n = len(words)
    if n < cfg.min_words:
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    # What repair could not fix; a replacement character means bytes were lost for good.
    if "\ufffd" in text or len(MOJIBAKE.findall(text)) > n // 500:
        return "mojibake"
    lowered = [w.lower().strip(".,;:!?\"'()") for w in words]
    if sum(w in LOREM_WORDS for w in lowered) > 0.2 * n or PLACEHOLDER.search(text) or \
            (not code and TEMPLATE_FIELD.search(text)):
        return "placeholder_text"
    # Repeats beyond the first occurrence, as Gopher counts them.
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    limit = cfg.code_max_duplicate_line_frac if code else cfg.max_duplicate_line_frac
    if len(lines) - len(set(lines)) > limit * len(lines):
        return "duplicate_lines"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    limit = cfg.code_max_duplicate_line_frac if code else cfg.max_duplicate_paragraph_frac
    if len(paragraphs) - len(set(paragraphs)) > limit * len(paragraphs):
        return "duplicate_paragraphs"
    if n < cfg.repetition_min_words:  # in a short text one repeated name is a large share
        return None
    chars = sum(len(w) for w in lowered)
    if not code:  # code repeats its names by nature
        for k, limit in cfg.max_top_ngram_frac.items():
            if _top_ngram_frac(lowered, k, chars) > limit:
                return f"top_{k}gram"
    for k, limit in (cfg.code_max_duplicate_ngram_frac if code else cfg.max_duplicate_ngram_frac).items():
        if _dup_ngram_frac(lowered, k, chars) > limit:
            return f"duplicate_{k}gram"
    return None


def prose_rule_failed(text: str, cfg, domain: str = "prose") -> str | None:
    """The first heuristic a natural-language document fails, or None. Math passes lower
    alphabetic-word and digit thresholds: worked solutions are full of numbers and operators."""
    words = text.split()
    n = len(words)
    if domain == "web" and n < cfg.web_min_words:
        return "too_few_words"
    reason = common_rule_failed(text, words, False, cfg)
    if reason:
        return reason
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
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if sum(bool(SENTENCE_END.search(line)) for line in lines) < cfg.min_sentence_lines:
        return "no_sentence"
    if sum(line.startswith(("-", "*", "•")) for line in lines) > cfg.max_bullet_line_frac * len(lines):
        return "bullet_lines"
    if sum(line.endswith(("...", "…")) for line in lines) > cfg.max_ellipsis_line_frac * len(lines):
        return "ellipsis_lines"
    return None


def code_rule_failed(text: str, cfg) -> str | None:
    """Code passes the common rules counted in identifier and keyword tokens, then its own:
    prose heuristics (stop words, word length) would drop real source."""
    reason = common_rule_failed(text, WORD.findall(text), True, cfg)
    if reason:
        return reason
    if max(len(line) for line in text.split("\n")) > cfg.code_max_line_len:
        return "code_long_line"
    if sum(c.isalnum() for c in text) < 0.25 * len(text):
        return "code_alnum_ratio"
    return None


def rule_failed(text: str, domain: str, cfg) -> str | None:
    return code_rule_failed(text, cfg) if domain == "code" else prose_rule_failed(text, cfg, domain)


def route(text: str, predicted: str) -> str:
    """The domain of an unlabelled document: code only when sure (is_code), math when the domain
    classifier says so, otherwise what it predicts, except that text it takes for code without
    being sure is plain web text, held to the web's quality classifier."""
    if is_code(text):
        return "code"
    return "web" if predicted == "code" else predicted


def dedup_key(text: str) -> str:
    """Exact-duplicate key: case, punctuation and whitespace differences do not count."""
    return hashlib.sha1(" ".join(WORD.findall(text.lower())).encode()).hexdigest()


def long_line_keys(text: str, min_words: int) -> tuple[list[str], float]:
    """Keys (as dedup_key) of the lines with at least `min_words` words, and their share of the
    text's words."""
    keys, covered, total = [], 0, 0
    for line in text.split("\n"):
        words = WORD.findall(line.lower())
        total += len(words)
        if len(words) >= min_words:
            keys.append(hashlib.sha1(" ".join(words).encode()).hexdigest())
            covered += len(words)
    return keys, covered / max(1, total)


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
