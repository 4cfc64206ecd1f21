"""What the corpus filter keeps and drops, and why."""

from herd import corpus, filters
from herd.config import FilterConfig
from tasks.filter import filter_documents

CFG = FilterConfig()


def run_filter(docs, grams=frozenset()):
    kept, rejects, _ = filter_documents(docs, CFG, set(grams))
    return kept, {r["id"]: r["reject_reason"] for r in rejects}


def test_real_prose_and_code_pass():
    prose = corpus.python_docs_prose(200)
    code = corpus.stdlib_code(60)
    kept, rejects = run_filter(prose + code)
    kept_ids = {d["id"] for d in kept}
    assert sum(d["id"] in kept_ids for d in code) == len(code)
    assert sum(d["id"] in kept_ids for d in prose) >= 0.95 * len(prose)


def test_generated_junk_is_dropped_with_a_reason():
    prose = corpus.python_docs_prose(200)
    pages = corpus.web_pages(400, seed=1, prose=prose)
    _, rejects = run_filter(prose + pages)
    for kind in ("spam", "lorem", "mojibake", "symbols", "repeated", "duplicate", "boilerplate", "wrapped"):
        ids = [p["id"] for p in pages if p["source"] == f"generated-web-{kind}"]
        dropped = sum(i in rejects for i in ids)
        assert dropped >= 0.95 * len(ids), (kind, dropped, len(ids))
    assert {rejects[p["id"]] for p in pages if p["source"] == "generated-web-duplicate"} == {"exact_duplicate"}


def test_boilerplate_lines_are_stripped():
    text = "Home | About | Contact\nWe use cookies to improve your experience.\nReal body text here."
    assert filters.normalise(text) == "Real body text here."


def test_math_with_numbers_passes_math_rules():
    docs = corpus.math_problems(50, seed=3, split="train")
    kept, rejects = run_filter(docs)
    assert len(kept) == 50, rejects


def test_contaminated_documents_are_dropped():
    test = corpus.math_problems(5, seed=9, split="test")
    grams = set().union(*(filters.ngrams(p["question"], 13) for p in test))
    leaked = {"id": "leak", "domain": "prose",
              "text": "Here is a question from the test set that leaked into the web. " + test[0]["question"]}
    clean = corpus.python_docs_prose(3)
    _, rejects = run_filter([leaked, *clean], grams)
    assert rejects == {"leak": "contaminated"}


def test_malformed_records_are_counted_not_fatal():
    docs = [{"id": "a", "domain": "web", "text": None}, {"id": "b", "domain": "web", "text": "   "},
            {"id": "c", "domain": "web"}]
    kept, rejects = run_filter(docs)
    assert kept == [] and rejects == {"a": "missing_text", "b": "empty_after_boilerplate", "c": "missing_text"}


def test_mix_follows_weights_without_repeats():
    docs = [{"id": f"{d}{i}", "domain": d, "text": "x" * 100} for d in ("math", "code") for i in range(100)]
    mixed, shares = filters.mix(docs, {"math": 0.25, "code": 0.75}, seed=0)
    assert abs(shares["math"] - 0.25) < 0.02
    assert len({d["id"] for d in mixed}) == len(mixed)
