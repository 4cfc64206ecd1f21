"""corpus: assemble the raw documents (built-in corpus + configured sources) and the eval sets."""

from herd.data import corpus
from herd.data.corpus import CorpusConfig
from herd.data.io import load_source, write_jsonl, write_table
from herd.stage import StageRun, StageSpec, main

SPEC = StageSpec(__doc__, inputs=(), params={"seed": int, "corpus": CorpusConfig})


def run(st: StageRun) -> None:
    cfg = st.cfg.corpus
    st.manifest["sources"] = ["builtin"] + [s.path for s in cfg.sources]
    docs = list(corpus.builtin_corpus(cfg, st.seed))
    for source in cfg.sources:
        docs.extend(load_source(source))
    write_table(docs, st.out / "documents.parquet")
    for name, rows in corpus.builtin_evals(cfg, st.seed).items():
        write_jsonl(rows, st.out / "evals" / f"{name}.jsonl")
        st.metrics[f"eval_{name}"] = len(rows)
    st.metrics["documents"] = len(docs)
    for domain in sorted({d["domain"] for d in docs}):
        st.metrics[f"documents_{domain}"] = sum(d["domain"] == domain for d in docs)


if __name__ == "__main__":
    main(SPEC, run)
