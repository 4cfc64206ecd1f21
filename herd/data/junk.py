"""A mixed, unlabelled set to measure the corpus filter on: real clean documents (Wikipedia
articles, Python code) plus generated junk of every kind the filter claims to remove, built from
those same documents the way the web builds it (copies, re-encodings, templates, spam).

Each document carries a `kind` ("clean-prose", "clean-code" or the junk kind) for measuring only;
its `domain` is "auto", so the filter sees nothing but the text. Copies come after their original,
as a crawl meets them. Used by tests/test_filters.py and benchmarks/filter.py.
"""

import keyword
import random
import re
from pathlib import Path

from herd.data.corpus import junk_page
from herd.data.io import read_jsonl

KINDS = ("duplicate", "edited", "header", "boilerplate", "menu", "spam", "keywords", "lorem", "template",
         "mojibake", "mojibake-nbsp", "mojibake-lost", "fragment", "table", "repeated", "symbols", "contaminated")
MENU = ["Products", "Services", "About Us", "Contact", "Blog", "Careers", "Support", "Pricing", "FAQ", "Shop",
        "News", "Events", "Home", "Downloads", "Partners", "Gallery", "Sitemap", "Store locator"]
KEYWORDS = ["cheap flights", "best price", "buy online", "free shipping", "discount shoes", "top rated",
            "near me", "london hotels", "casino bonus", "weight loss", "crypto trading", "car insurance quote"]


def wikipedia(shared: Path, n: int) -> list[dict]:
    """The first `n` Wikipedia articles of at least 10 words (shorter pages are extraction remnants
    such as "X may refer to:" with the list stripped)."""
    rows = read_jsonl(shared / "prose" / "enwiki_2018_wikiextractor.jsonl.gz")
    return [{"id": f"wiki/{r['id']}", "text": r["text"]} for r in rows if len(r["text"].split()) >= 10][:n]


def python_code(shared: Path) -> list[dict]:
    """HumanEval (prompt and solution) and MBPP reference solutions: short, real Python."""
    docs = [{"id": f"humaneval/{r['task_id']}", "text": r["prompt"] + r["canonical_solution"]}
            for r in read_jsonl(shared / "code" / "HumanEval.jsonl.gz")]
    docs += [{"id": f"mbpp/{r['task_id']}", "text": r["code"].replace("\r\n", "\n")}
             for r in read_jsonl(shared / "code" / "mbpp.jsonl.gz")]
    return docs


def _reencode(text: str, times: int, codec: str = "cp1252") -> str:
    for _ in range(times):
        text = text.encode("utf-8").decode(codec, errors="replace")
    return text


def _junk(kind: str, rng: random.Random, prose: list[dict], code: list[dict], questions: list[str]) -> dict:
    """One junk document of `kind`; copies name their original in `copy_of`."""
    src = rng.choice(prose + code if kind in ("duplicate", "edited") else prose)
    text, copy_of = src["text"], None
    if kind == "duplicate":
        copy_of = src["id"]
    elif kind == "edited":  # about 3% of the words (at least one) changed, layout and keywords kept
        spans = [m.span() for m in re.finditer(r"\b[A-Za-z]{3,}\b", text) if not keyword.iskeyword(m.group())]
        for a, b in sorted(rng.sample(spans, min(len(spans), max(1, len(spans) * 3 // 100))), reverse=True):
            text = text[:a] + rng.choice(["very", "quite", "also", "often", "really", "simply"]) + text[b:]
        copy_of = src["id"]
    elif kind in ("header", "symbols"):
        text, copy_of = junk_page(kind, rng, text), src["id"]
    elif kind in ("boilerplate", "spam", "lorem"):
        text = junk_page(kind, rng, text)
    elif kind == "menu":
        text = "\n".join(rng.sample(MENU, rng.randint(6, 14)))
    elif kind == "keywords":  # SEO pages: the same few phrases in every order
        phrases = rng.sample(KEYWORDS, 4)
        text = " ".join(f"{rng.choice(phrases)} {rng.choice(['', '2024', 'deals', 'uk', 'online'])}".strip()
                        for _ in range(rng.randint(30, 120)))
    elif kind == "template":  # an unfilled page template around real prose
        first = text.split(". ")[0]
        text = f"{{{{page_title}}}}\n{first}. [Insert company description here.]\nContact us at {{{{email}}}}."
        copy_of = src["id"]
    elif kind in ("mojibake", "mojibake-nbsp", "mojibake-lost"):
        # A copy that went through broken pipelines: UTF-8 read as CP1252/Latin-1 once, non-breaking
        # spaces encoded two or three times ("Ã‚Â"), or CP1252 with the undefined bytes lost.
        styled = text.replace("'", "\u2019").replace(" - ", " \u2014 ")
        if kind == "mojibake-nbsp":
            words = styled.split(" ")
            styled = " ".join(w + ("\u00a0" if w[:1].isdigit() or w in ("Mr.", "Dr.", "St.") else " ")
                              for w in words[:-1]) + " " + words[-1]
            text = _reencode(styled, rng.choice((2, 3)))
        elif kind == "mojibake":
            text = _reencode(f"\u201c{styled}\u201d", 1, rng.choice(("cp1252", "latin-1")))
        else:
            text = _reencode(f"\u201c{styled}\u201d \u2013 \u201cquoted\u201d", rng.choice((1, 2)))
        copy_of = src["id"]
    elif kind == "fragment":  # a few words cut from the middle of a sentence
        words = text.split()
        start = rng.randrange(max(1, len(words) - 12))
        text = " ".join(words[start : start + rng.randint(3, 12)]).rstrip(".,;:!?")
    elif kind == "table":
        cols = rng.randint(3, 7)
        sep = rng.choice([" ", "\t", " | ", ", "])
        text = "\n".join(sep.join(f"{rng.uniform(0, 10 ** rng.randint(1, 5)):.{rng.randint(0, 2)}f}"
                                  for _ in range(cols)) for _ in range(rng.randint(5, 40)))
    elif kind == "repeated":
        line = text.split(". ")[0].rstrip(".") + "."
        text = "\n".join([line] * rng.randint(6, 20))
    elif kind == "contaminated":  # an eval question pasted into an article
        paragraphs = text.split("\n")
        leak = rng.choice(questions)
        paragraphs.insert(rng.randint(0, len(paragraphs)), leak)
        return {"text": "\n".join(paragraphs), "copy_of": src["id"], "leak": leak}
    return {"text": text, "copy_of": copy_of}


def mixed_set(prose: list[dict], code: list[dict], questions: list[str], per_kind: int, seed: int) -> list[dict]:
    """Clean prose and code plus `per_kind` junk documents of every kind in KINDS, shuffled, each
    copy placed after its original. `questions` are eval items the "contaminated" kind leaks."""
    rng = random.Random(f"mixed:{seed}")
    clean = [{**d, "kind": "clean-prose"} for d in prose] + [{**d, "kind": "clean-code"} for d in code]
    junk = [{**_junk(kind, rng, prose, code, questions), "id": f"junk/{kind}/{i}", "kind": kind}
            for kind in KINDS for i in range(per_kind)]
    order = clean + [d for d in junk if d["copy_of"] is None]
    rng.shuffle(order)
    for doc in (d for d in junk if d["copy_of"] is not None):
        after = next(i for i, d in enumerate(order) if d["id"] == doc["copy_of"])
        order.insert(rng.randint(after + 1, len(order)), doc)
    return [{"id": d["id"], "text": d["text"], "domain": "auto", "kind": d["kind"],
             **({"leak": d["leak"]} if "leak" in d else {})} for d in order]


def shared_mixed_set(shared: Path, per_kind: int = 40, seed: int = 0) -> list[dict]:
    """The mixed set from ../shared/data: 600 Wikipedia articles, HumanEval and MBPP, GSM8K test
    questions leaked into articles."""
    questions = [r["question"] for r in read_jsonl(shared / "gsm8k" / "test.jsonl.gz")]
    return mixed_set(wikipedia(shared, 600), python_code(shared), questions, per_kind, seed)


def scorecard(docs: list[dict], kept: dict[str, str], duplicate_of: dict[str, str]) -> dict:
    """Keep rates of the clean kinds and removal rates of the junk kinds, given the kept documents'
    final text by id and what each deduplicated document duplicates. A clean document dropped as
    a duplicate of another clean one counts as kept: its content is (templated Wikipedia stubs,
    MBPP's near-identical solutions). A leaked eval question counts as removed when its document
    is dropped or the question was cut out of it."""
    kinds = {d["id"]: d["kind"] for d in docs}
    card, removed_junk, junk_docs = {}, 0, 0
    for kind in ("clean-prose", "clean-code", *KINDS):
        docs_of_kind = [d for d in docs if d["kind"] == kind]
        if not docs_of_kind:
            continue
        if kind.startswith("clean"):
            content = sum(d["id"] in kept or kinds.get(duplicate_of.get(d["id"]), "").startswith("clean")
                          for d in docs_of_kind)
            card[f"kept_{kind}"] = round(content / len(docs_of_kind), 4)
            continue
        removed = sum(d["id"] not in kept or (kind == "contaminated" and d["leak"] not in kept[d["id"]])
                      for d in docs_of_kind)
        card[f"removed_{kind}"] = round(removed / len(docs_of_kind), 4)
        removed_junk += removed
        junk_docs += len(docs_of_kind)
    card["removed_junk"] = round(removed_junk / max(1, junk_docs), 4)
    return card
