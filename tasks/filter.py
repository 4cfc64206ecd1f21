"""filter: clean, deduplicate, decontaminate and re-mix the raw corpus.

Every input document ends up either in the kept corpus or in rejects.parquet with the rule that
dropped it; metrics.json counts both per rule and per domain.
"""

import json
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from herd import filters
from herd.data import in_holdout, read_jsonl, read_table, write_table
from herd.errors import HerdError
from herd.plots import funnel_plot
from herd.stage import main, stage_run


def eval_ngrams(evals_dir: Path, extra_files: list[str], n: int) -> set:
    """n-grams of every eval text the pipeline scores models on, plus configured benchmark files."""
    grams = set()
    for row in read_jsonl(evals_dir / "math_test.jsonl"):
        grams |= filters.ngrams(row["question"], n)
    for path in extra_files:
        for row in read_jsonl(Path(path)):
            for value in row.values():
                if isinstance(value, str):
                    grams |= filters.ngrams(value, n)
    return grams


def filter_documents(docs: list[dict], cfg, grams: set) -> tuple[list[dict], list[dict], list[tuple[str, int]]]:
    """Apply every rule in order. Returns kept, rejected (with `reject_reason`) and the funnel."""
    kept, rejects, seen = [], [], set()
    funnel = Counter()
    for doc in tqdm(docs, desc="filter", unit="doc", mininterval=2):
        reason = None
        text = doc.get("text")
        if not isinstance(text, str):
            reason = "missing_text"
        else:
            text = filters.normalise(text)
            if not text:
                reason = "empty_after_boilerplate"
            elif doc.get("domain") == "code":
                reason = filters.code_rule_failed(text, cfg)
            else:
                alpha = cfg.math_min_alpha_word_frac if doc.get("domain") == "math" else cfg.min_alpha_word_frac
                reason = filters.prose_rule_failed(text, cfg, alpha)
        if reason is None:
            funnel["heuristics"] += 1
            key = filters.dedup_key(text)
            if key in seen:
                reason = "exact_duplicate"
            seen.add(key)
        if reason is None:
            funnel["dedup"] += 1
            if filters.contaminated(text, grams, cfg.decontam_ngram):
                reason = "contaminated"
        if reason is None:
            kept.append({**doc, "text": text})
        else:
            rejects.append({**doc, "text": text if isinstance(text, str) else None, "reject_reason": reason})
    steps = [("input", len(docs)), ("heuristics", funnel["heuristics"]), ("dedup", funnel["dedup"]),
             ("decontam", len(kept))]
    return kept, rejects, steps


def run() -> None:
    with stage_run("filter", inputs=["corpus"]) as st:
        cfg = st.cfg.filter
        corpus = st.input("corpus")
        docs = read_table(corpus / "documents.parquet")
        grams = eval_ngrams(corpus / "evals", list(cfg.decontam_files), cfg.decontam_ngram)
        kept, rejects, funnel = filter_documents(docs, cfg, grams)
        if not kept:
            top = Counter(r["reject_reason"] for r in rejects).most_common(1)
            raise HerdError(f"the filter removed every document; the rule that removed most was "
                            f"'{top[0][0]}' ({top[0][1]} documents): check its threshold in params.yaml")
        validation = [d for d in kept if in_holdout(d["id"], cfg.validation_frac)]
        train, shares = filters.mix([d for d in kept if not in_holdout(d["id"], cfg.validation_frac)],
                                    dict(cfg.weights), st.seed)
        write_table(train, st.out / "train.parquet")
        write_table(validation, st.out / "validation.parquet")
        write_table(rejects, st.out / "rejects.parquet")
        funnel.append(("mix", len(train)))
        funnel_plot(funnel, st.out / "funnel.png")
        import mlflow

        mlflow.log_artifact(str(st.out / "funnel.png"))
        st.metrics.update({
            "documents_in": len(docs), "kept": len(kept), "rejected": len(rejects),
            "train_documents": len(train), "validation_documents": len(validation),
            "contaminated": sum(r["reject_reason"] == "contaminated" for r in rejects),
            "exact_duplicates": sum(r["reject_reason"] == "exact_duplicate" for r in rejects),
        })
        for reason, count in sorted(Counter(r["reject_reason"] for r in rejects).items()):
            st.metrics[f"rejected_{reason}"] = count
        for domain in sorted({d["domain"] for d in docs}):
            n_in = sum(d["domain"] == domain for d in docs)
            st.metrics[f"kept_frac_{domain}"] = round(sum(d["domain"] == domain for d in kept) / n_in, 4)
        for domain, share in shares.items():
            st.metrics[f"mix_share_{domain}"] = round(share, 4)
        (st.out / "funnel.json").write_text(json.dumps(dict(funnel), indent=2) + "\n")


if __name__ == "__main__":
    main(run)
