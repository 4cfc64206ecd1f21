"""The built-in corpus, generated deterministically on the machine so the pipeline runs offline.

Five kinds of document: real Python standard-library code, real English prose from
Python's own documentation, arithmetic word problems with worked solutions, long documents hiding a
pass key, and low-quality web pages (boilerplate, spam, lorem ipsum, mojibake, duplicates) that
the filter must remove. Every record is a dict with at least `id`, `text` and `domain`.
"""

import ast
import hashlib
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herd.config import ParamError, non_negative, positive
from herd.data.domains import check_domain
from herd.data.io import is_local

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
         "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Yusuf"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "coins", "stamps", "shells",
         "cards", "eggs", "flowers", "tickets", "boxes", "bottles", "candles"]
PLACES = ["the market", "school", "the library", "a fair", "the shop", "the park", "a garage sale"]


@dataclass
class SourceConfig:
    """An extra corpus source read through `datasets.load_dataset`."""

    path: str  # a hub name ("HuggingFaceFW/fineweb-edu") or a local json/jsonl/parquet file
    domain: str = "auto"  # web | prose | code | math | long, or auto: the filter routes each document by content
    text_field: str = "text"
    split: str = "train"
    name: str | None = None  # the hub dataset's config name
    revision: str | None = None  # a hub dataset's commit (default: the one `main` points at, recorded in the lineage)
    limit: int | None = None  # read at most this many records


@dataclass
class CorpusConfig:
    """The built-in corpus, generated deterministically on the machine."""

    code_files: int = 500  # Python standard-library modules
    prose_docs: int = 1500  # passages of Python's own documentation (reference and docstrings)
    math_problems: int = 1000  # arithmetic word problems with worked solutions
    math_test_problems: int = 200  # held out: evals, reward accuracy, decontamination
    # Short arithmetic on small numbers, within a small model's reach: the post-training task
    # (`task.kind: drill`) samples its prompts and held-out checks from the two splits after these.
    # Training drills come as worksheets of drills_per_doc problems: one drill alone is a near
    # duplicate of every other on the same numbers, which the filter's dedup would remove.
    drills: int = 12000
    drills_per_doc: int = 10
    drill_max: int = 10  # operands are 1..drill_max
    drill_prompts: int = 1200  # post-training prompts (reward model and rejection sampling)
    drill_test: int = 500  # held out: exact match and win rates of the policies
    passkey_docs: int = 150  # long documents with a pass key to retrieve
    passkey_test_docs: int = 30
    passkey_words: int = 600  # length of each passkey document in words
    web_pages: int = 1500  # generated low-quality pages the filter must remove
    sources: list[SourceConfig] = field(default_factory=list)

    def local_sources(self, root: Path) -> list[str]:
        """The local source files and folders (dependencies of the corpus stage)."""
        return [s.path for s in self.sources if is_local(s.path, root)]

    def check(self, root: Path) -> None:
        non_negative(self, "code_files", "prose_docs", "math_problems", "passkey_docs", "web_pages", "drills")
        positive(self, "math_test_problems", "passkey_test_docs", "passkey_words", "drill_max", "drill_prompts",
                 "drill_test", "drills_per_doc")
        for i, src in enumerate(self.sources):
            if src.domain != "auto":
                check_domain(src.domain, f"sources[{i}].domain")
            if src.limit is not None and src.limit < 1:
                raise ParamError(f"sources[{i}].limit", f"must be at least 1, got {src.limit}")
            if is_local(src.path, root) and not (root / src.path).exists():
                raise ParamError(f"sources[{i}].path", f"input file {root / src.path} does not exist")


def _stable_order(items: list[str], salt: str) -> list[str]:
    """A shuffle that depends only on the items themselves, not on a RNG or the file system order."""
    return sorted(items, key=lambda s: hashlib.sha256(f"{salt}:{s}".encode()).hexdigest())


def stdlib_code(n: int) -> list[dict]:
    """Real Python source files from the running interpreter's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if not {"test", "tests", "site-packages", "idle_test", "lib2to3"} & set(p.relative_to(root).parts)
        and 1500 <= p.stat().st_size <= 30000
    ]
    docs = []
    for rel in _stable_order(files, "code"):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        docs.append({"id": f"code/{rel}", "text": text, "domain": "code", "source": "python-stdlib"})
        if len(docs) == n:
            break
    return docs


def _doc_paragraphs() -> list[tuple[str, str]]:
    """(origin, paragraph) pairs of English prose from Python's documentation: the language
    reference topics shipped in pydoc_data, then standard-library module docstrings."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for i, para in enumerate(topics[name].split("\n\n")):
            para = " ".join(line.strip() for line in para.splitlines() if line.strip())
            # Prose only: code samples, tables and grammar rules are indented or symbol-heavy.
            if len(para.split()) >= 25 and not para.startswith((">>>", "*", "|", "+")) and "::=" not in para:
                paragraphs.append((f"topics/{name}/{i}", para))
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        documented = [tree] + [n for n in ast.walk(tree)
                               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in documented:
            owner = getattr(node, "name", "module")
            for i, para in enumerate((ast.get_docstring(node) or "").split("\n\n")):
                para = " ".join(line.strip() for line in para.splitlines() if line.strip())
                if len(para.split()) >= 25 and not para.startswith(">>>"):
                    paragraphs.append((f"docstring/{path.stem}.{owner}/{i}", para))
    return paragraphs


def python_docs_prose(n: int) -> list[dict]:
    """Documents of 2-4 consecutive paragraphs of Python's documentation."""
    paragraphs = _doc_paragraphs()
    docs, i = [], 0
    while i < len(paragraphs) and len(docs) < n:
        size = 2 + (i % 3)
        chunk = paragraphs[i : i + size]
        docs.append({
            "id": f"prose/{chunk[0][0]}",
            "text": "\n\n".join(p for _, p in chunk),
            "domain": "prose",
            "source": "python-docs",
        })
        i += size
    return docs


def _problem(rng: random.Random) -> tuple[str, str, int]:
    """One arithmetic word problem: (question, worked solution, answer)."""
    name, other = rng.sample(NAMES, 2)
    item, place = rng.choice(ITEMS), rng.choice(PLACES)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(2, 300), rng.randint(2, 300)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        s = f"{name} starts with {a} {item} and gets {b} more, so {a} + {b} = {a + b}."
        ans = a + b
    elif kind == 1:
        a = rng.randint(20, 600)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and sold {b} of them at {place}. How many {item} are left?"
        s = f"{name} had {a} {item} and sold {b}, so {a} - {b} = {a - b} are left."
        ans = a - b
    elif kind == 2:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        q = f"At {place}, {name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
        s = f"There are {a} bags of {b} {item}, so {a} * {b} = {a * b}."
        ans = a * b
    elif kind == 3:
        b, ans = rng.randint(2, 20), rng.randint(2, 60)
        a = b * ans
        q = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        s = f"{a} {item} shared by {b} friends gives {a} / {b} = {ans} each."
    elif kind == 4:
        a, b = rng.randint(5, 200), rng.randint(2, 200)
        c = rng.randint(1, a + b - 1)
        q = (f"{name} collects {a} {item} on Monday and {b} on Tuesday, then gives {c} to {other}. "
             f"How many {item} does {name} keep?")
        s = f"{name} collects {a} + {b} = {a + b} {item}. After giving {c} away, {a + b} - {c} = {a + b - c}."
        ans = a + b - c
    else:
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(1, 90)
        q = f"{name} reads {a} pages a day for {b} days, then {c} pages on day {b + 1}. What is the total?"
        s = f"{name} reads {a} * {b} = {a * b} pages, then {a * b} + {c} = {a * b + c} pages in total."
        ans = a * b + c
    return q, f"{s} The answer is {ans}.", ans


DRILLS = ("What is {a} {op} {b}?", "{name} asks: what is {a} {op} {b}?", "Compute {a} {op} {b}.",
          "{name} has {a} {item} and {verb} {b}. How many now? {a} {op} {b}")


def _drill(rng: random.Random, top: int) -> tuple[str, str, int]:
    """One short addition or subtraction on numbers 1..top, its operands close to the answer so
    that a small model can read them: (question, worked solution, answer)."""
    a, b = rng.randint(1, top), rng.randint(1, top)
    op = rng.choice("+-")
    if op == "-":
        a, b = max(a, b), min(a, b)
    ans = a + b if op == "+" else a - b
    q = rng.choice(DRILLS).format(a=a, b=b, op=op, name=rng.choice(NAMES), item=rng.choice(ITEMS),
                                  verb="gets" if op == "+" else "gives away")
    return q, f"{a} {op} {b} = {ans}. The answer is {ans}.", ans


def math_problems(n: int, seed: int, split: str, kind: str = "math", top: int = 0,
                  exclude: frozenset[str] = frozenset()) -> list[dict]:
    """n distinct worked problems of `kind` (math: word problems; drill: short arithmetic on 1..top),
    none of whose questions is in `exclude` (the other splits)."""
    rng = random.Random(f"{kind}:{split}:{seed}")
    docs, seen = [], set(exclude)
    while len(docs) < n:
        q, s, ans = _problem(rng) if kind == "math" else _drill(rng, top)
        if q in seen:
            continue
        seen.add(q)
        docs.append({
            "id": f"{kind}/{split}/{len(docs)}",
            "text": f"Question: {q}\nAnswer: {s}",
            "domain": "math",
            "source": f"generated-{kind}",
            "question": q,
            "solution": s,
            "answer": str(ans),
        })
    return docs


def drills(cfg, seed: int) -> dict[str, list[dict]]:
    """The drills' three splits, no question in two: train (worksheets, pretraining documents),
    prompts and test (one problem each)."""
    out, taken = {}, set()
    for split, n in (("test", cfg.drill_test), ("prompts", cfg.drill_prompts), ("train", cfg.drills)):
        out[split] = math_problems(n, seed, split, "drill", cfg.drill_max, frozenset(taken))
        taken |= {d["question"] for d in out[split]}
    problems, k = out["train"], cfg.drills_per_doc
    out["train"] = [{"id": f"drill/train/{i // k}", "text": "\n\n".join(p["text"] for p in problems[i : i + k]),
                     "domain": "math", "source": "generated-drill"} for i in range(0, len(problems), k)]
    return out


PASSKEY_QUESTION = "What is the pass key? The pass key is"


def passkey_docs(n: int, words: int, seed: int, split: str) -> list[dict]:
    """Long documents of documentation prose with a five-digit pass key hidden at a random depth.
    Training documents end with the answer; test documents end at the question."""
    rng = random.Random(f"passkey:{split}:{seed}")
    paragraphs = [p for _, p in _doc_paragraphs()]
    # Consecutive documents take consecutive stretches (train from the front, test from the back),
    # so they do not overlap each other as near-duplicates would.
    cursor = 0 if split == "train" else len(paragraphs) // 2
    docs = []
    for i in range(n):
        key = str(rng.randint(10000, 99999))
        body = []
        while sum(len(p.split()) for p in body) < words:
            body.append(paragraphs[cursor % len(paragraphs)])
            cursor += 1
        body.insert(rng.randint(0, len(body)), f"The pass key is {key}. Remember it. {key} is the pass key.")
        prompt = "\n\n".join(body) + "\n\n" + PASSKEY_QUESTION
        text = f"{prompt} {key}." if split == "train" else prompt
        docs.append({"id": f"long/{split}/{i}", "text": text, "domain": "long", "source": "generated-passkey",
                     "answer": key})
    return docs


LOREM = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris").split()
NAV = ["Home | About | Blog | Contact | Login", "Skip to main content", "Menu", "Search this site",
       "We use cookies to improve your experience. Accept all cookies", "Share on Facebook | Tweet | Pin it",
       "Copyright 2024 All rights reserved. Privacy Policy | Terms of Use", "Subscribe to our newsletter"]
SPAM = ["BUY NOW!!! Best price guaranteed $$$", "Click here for FREE bonus!!!", "cheap pills online no prescription",
        "WIN WIN WIN casino bonus $$$ ###", "hot singles in your area click >>> here <<<"]


def junk_page(kind: str, rng: random.Random, src: str) -> str:
    """A junk page of a kind that both the built-in corpus and the filter's mixed measuring set
    (herd/data/junk.py) make, from the real text `src` where it copies one."""
    if kind == "spam":
        return "\n".join(rng.choice(SPAM) for _ in range(rng.randint(8, 30)))
    if kind == "lorem":
        return "Lorem ipsum dolor sit amet, " + " ".join(rng.choice(LOREM) for _ in range(rng.randint(60, 300)))
    if kind == "symbols":
        return " ".join(rng.choice(["###", "$$$", "@@", "...", "|", "%%"]) + w for w in src.split())
    if kind == "header":  # a near-duplicate: a byline and a footer around a copied page
        return (f"Posted by {rng.choice(NAMES)} on {rng.randint(1, 28)} March 20{rng.randint(10, 24)}.\n{src}\n"
                f"This article was shared {rng.randint(2, 900)} times by our readers.")
    if kind == "boilerplate":
        return "\n".join(rng.choice(NAV) for _ in range(rng.randint(5, 15)))
    raise ValueError(f"no shared junk page of kind '{kind}'")


def web_pages(n: int, seed: int, prose: list[dict]) -> list[dict]:
    """Low-quality pages of every kind the filter must catch, plus pages wrapping real prose in
    navigation boilerplate (whose body should survive once the boilerplate lines are stripped)."""
    rng = random.Random(f"web:{seed}")
    kinds = ["wrapped", "spam", "lorem", "mojibake", "symbols", "repeated", "duplicate", "boilerplate", "edited",
             "header"]
    docs = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        src = prose[rng.randrange(len(prose))]["text"]
        if kind == "wrapped":
            text = "\n".join(rng.sample(NAV, 3) + [src] + rng.sample(NAV, 2))
        elif kind == "mojibake":  # UTF-8 read as Latin-1 (repairable) or as CP1252 with bytes lost (not)
            text = "\u201c" + src.replace("'", "\u2019").replace(" - ", " \u2014 ") + "\u201d"
            codec = "latin-1" if (i // len(kinds)) % 2 else "cp1252"
            text = text.encode("utf-8").decode(codec, errors="replace")
        elif kind == "repeated":
            line = src.split(". ")[0]
            text = "\n".join([line] * rng.randint(6, 20))
        elif kind == "duplicate":
            text = src  # an exact copy of a documentation page
        elif kind == "edited":  # a near-duplicate: about 3% of the words replaced
            words = src.split()
            for j in rng.sample(range(len(words)), max(1, len(words) * 3 // 100)):
                words[j] = rng.choice(["very", "quite", "also", "often", "really", "simply"])
            text = " ".join(words)
        else:
            text = junk_page(kind, rng, src)
        docs.append({"id": f"web/{i}", "text": text, "domain": "web", "source": f"generated-web-{kind}",
                     "url": f"http://example.com/{kind}/{i}"})
    return docs


def builtin_corpus(cfg, seed: int) -> Iterator[dict]:
    """Every training document of the built-in corpus, in a fixed order."""
    prose = python_docs_prose(cfg.prose_docs)
    yield from stdlib_code(cfg.code_files)
    yield from prose
    yield from math_problems(cfg.math_problems, seed, "train")
    yield from drills(cfg, seed)["train"]
    yield from passkey_docs(cfg.passkey_docs, cfg.passkey_words, seed, "train")
    yield from web_pages(cfg.web_pages, seed, prose)


def builtin_evals(cfg, seed: int) -> dict[str, list[dict]]:
    """Held-out evaluation sets; the filter decontaminates the training corpus against them."""
    drill = drills(cfg, seed)
    return {
        "math_test": math_problems(cfg.math_test_problems, seed, "test"),
        "drill_prompts": drill["prompts"],
        "drill_test": drill["test"],
        "passkey_test": passkey_docs(cfg.passkey_test_docs, cfg.passkey_words, seed, "test"),
    }
