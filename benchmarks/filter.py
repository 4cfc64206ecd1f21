"""Corpus filtering: Herd's filter vs datatrove's Gopher, C4 and FineWeb filters and MinHash, side
by side on the same documents in one process, one core each.

Herd: normalisation, every heuristic, the quality and domain classifiers, decontamination and
MinHash near-dedup with LSH. datatrove: GopherRepetitionFilter + GopherQualityFilter +
C4QualityFilter + FineWebQualityFilter chained, plus MinhashDedupSignature's shingles and
signature (its bucket and cluster stages run as separate jobs on disk and are not timed, which
favours datatrove). Quality is compared on the same documents: the drop rate of each kind of
generated junk, the keep rate of clean prose and code, and keep precision/recall against the DCLM
human labels when ../shared/data is present; then on the mixed, unlabelled set of
herd/data/junk.py (Wikipedia, HumanEval, MBPP and junk made from them), Herd with --domain auto
and as web pages against datatrove's filters. The last line printed is one JSON object.

    pip install -e ".[bench]"; python benchmarks/filter.py
"""

import gzip
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from herd.data import corpus, junk
from herd.data.corpus import CorpusConfig
from herd.data.filter import FilterRun, eval_ngrams, train_classifiers
from herd.data.io import read_table
from herd.recipe import check_params

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def documents() -> list[dict]:
    """Generated junk of every kind, clean prose and code, and real web pages with labels."""
    prose = corpus.python_docs_prose(800)
    docs = [{**d, "kind": "clean-prose"} for d in prose]
    docs += [{**d, "kind": "clean-code"} for d in corpus.stdlib_code(200)]
    docs += [{**d, "kind": d["source"].removeprefix("generated-web-")} for d in corpus.web_pages(1500, 7, prose)]
    dclm = SHARED / "web" / "dclm_human_quality" / "majority_data.jsonl.gz"
    if dclm.exists():
        for i, line in enumerate(gzip.open(dclm, "rt")):
            row = json.loads(line)
            docs.append({"id": f"dclm/{i}", "text": row["text"], "domain": "web", "kind": f"dclm-{row['label']}"})
    return docs


def herd_filter(docs: list[dict], cfg, classifiers, grams: set) -> tuple[dict[str, str], dict[str, str], float]:
    """Herd's kept texts by id, what each deduplicated document duplicates, and the seconds taken."""
    with tempfile.TemporaryDirectory() as tmp:
        run = FilterRun(cfg, Path(tmp))
        start = time.perf_counter()
        run.run(docs, (OmegaConf.to_container(cfg), grams, *classifiers))
        elapsed = time.perf_counter() - start
        kept = {r["id"]: r["text"] for r in read_table(Path(tmp) / "kept")}
        dups = {r["id"]: r["duplicate_of"] for r in read_table(Path(tmp) / "rejects") if r.get("duplicate_of")}
    return kept, dups, elapsed


def herd_decisions(docs: list[dict], cfg, classifiers) -> tuple[dict[str, bool], float]:
    kept, _, elapsed = herd_filter(docs, cfg, classifiers, set())
    return {d["id"]: d["id"] in kept for d in docs}, elapsed


def datatrove_decisions(docs: list[dict]) -> tuple[dict[str, bool], float]:
    from datatrove.data import Document
    from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    filters = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
               FineWebQualityFilter()]
    with tempfile.TemporaryDirectory() as tmp:
        minhash = MinhashDedupSignature(tmp, MinhashConfig(n_grams=5, num_buckets=32, hashes_per_bucket=4))
        decisions = {}
        start = time.perf_counter()
        for d in docs:
            doc = Document(text=d["text"], id=d["id"])
            keep = True
            for f in filters:
                result = f.filter(doc)
                if not (result[0] if isinstance(result, tuple) else result):
                    keep = False
                    break
            if keep:
                minhash.get_signature(minhash.get_shingles(doc.text))
            decisions[d["id"]] = keep
        elapsed = time.perf_counter() - start
    return decisions, elapsed


def quality(docs: list[dict], decisions: dict[str, bool]) -> dict:
    by_kind = Counter(d["kind"] for d in docs)
    kept = Counter(d["kind"] for d in docs if decisions[d["id"]])
    out = {f"keep_rate_{k}": round(kept[k] / n, 3) for k, n in sorted(by_kind.items())}
    if by_kind["dclm-1"]:
        tp, fp = kept["dclm-1"], kept["dclm-0"]
        out["dclm_keep_precision"] = round(tp / max(1, tp + fp), 3)
        out["dclm_keep_recall"] = round(tp / by_kind["dclm-1"], 3)
    return out


def main() -> None:
    params = check_params(ROOT)
    cfg = params.filter
    small = CorpusConfig(code_files=150, prose_docs=600, math_problems=500, passkey_docs=20, web_pages=800)
    classifiers = train_classifiers(corpus.builtin_corpus(small, 1), cfg, 1)[:2]
    docs = documents()
    herd, herd_s = herd_decisions(docs, cfg, classifiers)
    print(f"herd:      {len(docs) / herd_s:8.0f} docs/s/core", flush=True)
    peer, peer_s = datatrove_decisions(docs)
    print(f"datatrove: {len(docs) / peer_s:8.0f} docs/s/core", flush=True)
    result = {"benchmark": "filter", "documents": len(docs), "herd_docs_per_s_per_core": round(len(docs) / herd_s, 1),
              "datatrove_docs_per_s_per_core": round(len(docs) / peer_s, 1), "ratio": round(peer_s / herd_s, 3),
              "herd_quality": quality(docs, herd), "datatrove_quality": quality(docs, peer)}
    if (SHARED / "gsm8k").exists():
        result.update(mixed_quality(cfg, classifiers))
    print(json.dumps(result))


def mixed_quality(cfg, classifiers) -> dict:
    """Both filters on the mixed, unlabelled set; datatrove has no decontamination, so its kept
    documents are taken as they are (a leaked question stays in)."""
    docs = junk.shared_mixed_set(SHARED)
    grams = eval_ngrams([SHARED / "gsm8k" / "test.jsonl.gz"], cfg.decontam_ngram)
    out = {"mixed_documents": len(docs)}
    for mode in ("auto", "web"):
        kept, dups, seconds = herd_filter([{**d, "domain": mode} for d in docs], cfg, classifiers, grams)
        out[f"mixed_herd_{mode}"] = junk.scorecard(docs, kept, dups)
        out[f"mixed_herd_{mode}_docs_per_s_per_core"] = round(len(docs) / seconds, 1)
    decisions, seconds = datatrove_decisions(docs)
    out["mixed_datatrove"] = junk.scorecard(docs, {d["id"]: d["text"] for d in docs if decisions[d["id"]]}, {})
    out["mixed_datatrove_docs_per_s_per_core"] = round(len(docs) / seconds, 1)
    return out


if __name__ == "__main__":
    main()
