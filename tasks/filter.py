"""filter: clean, classify, deduplicate, decontaminate and re-mix the raw corpus, then split it.

Every input document ends up either in train/ or validation/ or in rejects/ with the rule that
dropped it; metrics.json counts both per rule and per domain; funnel.png (funnel.json) shows what
each step removed, the rejects per rule and what mixing to the domain weights dropped or repeated.
The rules themselves are herd/data/filter.py (also on any file: `herd filter`).
"""

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
from omegaconf import OmegaConf

from herd.data.filter import (
    FUNNEL,
    FilterConfig,
    FilterRun,
    Scorer,
    boilerplate_report,
    eval_ngrams,
    quality_report,
    train_classifiers,
    write_mix,
)
from herd.data.io import in_holdout, read_records
from herd.plots import funnel_plot
from herd.stage import Plot, StageRun, StageSpec, main

SPEC = StageSpec(__doc__, inputs=("corpus",), params={"seed": int, "filter": FilterConfig}, headline=("kept",),
                 plots=(Plot("funnel", "documents", "step", "documents left after each step", "bar_horizontal"),))


def run(st: StageRun) -> None:
    cfg, runtime = st.cfg.filter, st.cfg.runtime.filter
    corpus = st.input("corpus")
    documents = corpus / "documents.parquet"
    total = pq.ParquetFile(documents).metadata.num_rows
    quality, domains, report = train_classifiers(read_records(documents), cfg, st.seed)
    quality.save(st.out / "classifiers", "quality")
    domains.save(st.out / "classifiers", "domain")
    # Not the drills': their test shares its arithmetic facts with training by design (the questions
    # differ), and 13-grams of such short documents would remove every drill on those facts.
    evals = [corpus / "evals" / "math_test.jsonl", *(st.root / f for f in cfg.decontam_files)]
    scorer_args = (OmegaConf.to_container(cfg), eval_ngrams(evals, cfg.decontam_ngram), quality, domains)
    filt = FilterRun(cfg, st.out, kept_name=".kept", workers=runtime.workers, shard_size=runtime.shard_size)
    filt.run(read_records(documents), scorer_args, total)
    st.metrics.update(filt.metrics())
    st.metrics.update(report)
    if cfg.quality_eval_files:
        st.metrics.update(quality_report([st.root / f for f in cfg.quality_eval_files], Scorer(*scorer_args)))
    if cfg.boilerplate_eval_files:
        st.metrics.update(boilerplate_report([st.root / f for f in cfg.boilerplate_eval_files]))
    st.metrics.update(write_mix(filt, st.out, dict(cfg.weights), st.seed))
    shutil.rmtree(st.out / ".kept")
    summary = funnel(filt, st.metrics, dict(cfg.weights), cfg.validation_frac)
    funnel_plot(summary, st.out / "funnel.png")
    (st.out / "funnel.json").write_text(json.dumps(summary, indent=2) + "\n")
    st.tables["funnel"] = [{"step": step, "documents": n} for step, n in summary["documents"].items()]
    import mlflow

    mlflow.log_artifact(str(st.out / "funnel.png"))


def funnel(filt: FilterRun, metrics: dict, weights: dict[str, float], validation_frac: float) -> dict:
    """What each step left and removed (funnel.json, funnel.png): the documents after each filtering
    step, after the validation split and in the training mix (copies counted: mixing to the weights
    drops documents of plentiful domains and may repeat scarce ones); the rejects per rule; each
    domain's share of characters before and after the mix, beside its weight."""
    documents = {step: filt.funnel[step] for step in FUNNEL}
    documents["validation_split"] = metrics["kept"] - metrics["validation_documents"]
    documents["mix"] = metrics["train_documents"]
    before = Counter()
    for doc in filt.kept_meta:  # what write_mix mixed: the kept documents not held out
        if not in_holdout(doc["id"], validation_frac):
            before[doc["domain"]] += doc["chars"]
    total = sum(before.values()) or 1
    mix = {domain: {"before": round(before[domain] / total, 4), "after": metrics.get(f"mix_share_{domain}", 0.0),
                    "weight": weights.get(domain, 0.0)} for domain in sorted(set(before) | set(weights))}
    return {"documents": documents, "rejected": dict(filt.reasons.most_common()), "mix": mix}


if __name__ == "__main__":
    main(SPEC, run)
