"""corpus: assemble the raw documents (built-in corpus + configured sources) and the eval sets.
A record that cannot be read is kept with its `read_error` (line and cause); the filter counts it
among its rejects. Local sources are dependencies of this stage; hub sources are pinned by commit
in the lineage."""

from herd.data import corpus
from herd.data.corpus import CorpusConfig
from herd.data.io import hub_revision, is_local, load_source, write_jsonl, write_table
from herd.stage import StageRun, StageSpec, hash_path, main

SPEC = StageSpec(__doc__, inputs=(), params={"seed": int, "corpus": CorpusConfig})


def run(st: StageRun) -> None:
    cfg = st.cfg.corpus
    st.manifest["sources"] = ["builtin"]
    docs = list(corpus.builtin_corpus(cfg, st.seed))
    for source in cfg.sources:
        if is_local(source.path, st.root):  # a DVC dependency of this stage: its hash is in dvc.lock
            revision = None
            st.manifest["sources"].append(f"{source.path}@sha256:{hash_path(st.root / source.path)}")
        else:
            revision = hub_revision(source)
            st.manifest["sources"].append(f"{source.path}@{revision or 'offline-cache'}")
        docs.extend(load_source(source, st.root, revision))
    st.metrics["unreadable_records"] = sum(1 for d in docs if d.get("read_error"))
    st.metrics["records_without_text"] = sum(1 for d in docs if d.get("text") is None and not d.get("read_error"))
    write_table(docs, st.out / "documents.parquet")
    for name, rows in corpus.builtin_evals(cfg, st.seed).items():
        write_jsonl(rows, st.out / "evals" / f"{name}.jsonl")
        st.metrics[f"eval_{name}"] = len(rows)
    st.metrics["documents"] = len(docs)
    for domain in sorted({d["domain"] for d in docs}):
        st.metrics[f"documents_{domain}"] = sum(d["domain"] == domain for d in docs)


if __name__ == "__main__":
    main(SPEC, run)
