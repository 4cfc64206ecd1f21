"""filter: clean, classify, deduplicate, decontaminate and re-mix the raw corpus, then split it.

Every input document ends up either in train/ or validation/ or in rejects/ with the rule that
dropped it; metrics.json counts both per rule and per domain, funnel.png shows what each step
removed. The rules themselves are herd/data/filter.py (also on any file: `herd filter`).
"""

import json
import shutil

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
from herd.data.io import read_records
from herd.plots import funnel_plot
from herd.stage import StageRun, StageSpec, main

SPEC = StageSpec(__doc__, inputs=("corpus",), params={"seed": int, "filter": FilterConfig})


def run(st: StageRun) -> None:
    cfg, runtime = st.cfg.filter, st.cfg.runtime.filter
    corpus = st.input("corpus")
    documents = corpus / "documents.parquet"
    total = pq.ParquetFile(documents).metadata.num_rows
    quality, domains, report = train_classifiers(read_records(documents), cfg, st.seed)
    quality.save(st.out / "classifiers", "quality")
    domains.save(st.out / "classifiers", "domain")
    evals = sorted((corpus / "evals").glob("math_test.jsonl")) + [st.root / f for f in cfg.decontam_files]
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
    steps = [(step, filt.funnel[step]) for step in FUNNEL] + [("mix", st.metrics["train_documents"])]
    funnel_plot(steps, st.out / "funnel.png")
    (st.out / "funnel.json").write_text(json.dumps(dict(steps), indent=2) + "\n")
    import mlflow

    mlflow.log_artifact(str(st.out / "funnel.png"))


if __name__ == "__main__":
    main(SPEC, run)
