"""filter: clean, classify, deduplicate, decontaminate and re-mix the raw corpus.

Per document, in worker processes (one shard at a time, so memory is bounded by the shard size):
Unicode NFC, mojibake repair and boilerplate removal; Gopher/C4/FineWeb heuristics (code has its
own); a fastText-style quality score (reference text vs raw web) and domain label; decontamination
against every eval set. Then, in document order: exact and MinHash near-duplicate removal, first
occurrence wins. Finally the kept documents are mixed to the domain weights and split.

Every input document ends up either kept or in rejects/ with the rule that dropped it, every
other column carried along; metrics.json counts both per rule and per domain.

Standalone, on any file and outside the pipeline (same rules, params from params.yaml):

    python -m tasks.filter --input FILE.jsonl[.gz]|FILE.parquet|DIR --output DIR [--decontaminate FILE ...]
"""

import argparse
import gzip
import json
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from omegaconf import OmegaConf
from tqdm import tqdm

from herd import filters
from herd.classifier import TextClassifier
from herd.config import load_params
from herd.data import in_holdout, read_jsonl, write_table
from herd.env import project_root
from herd.errors import HerdError
from herd.minhash import MinHasher, NearDuplicateIndex
from herd.plots import funnel_plot
from herd.stage import main, stage_run

FUNNEL = ("input", "heuristics", "quality", "decontamination", "exact_dedup", "near_dedup")


# ---------------------------------------------------------------- reading


def read_documents(path: Path, text_field: str = "text", batch: int = 1000) -> Iterator[dict]:
    """Records of a jsonl(.gz) or parquet file, or of every such file in a folder. A line that is
    not a JSON object becomes a record with no text and a `read_error`, so it is counted, not fatal."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [f for f in files if f.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet"))]
    if not files:
        raise HerdError(f"no .jsonl, .jsonl.gz or .parquet input at {path}")
    for file in files:
        if file.suffix == ".parquet":
            for record_batch in pq.ParquetFile(file).iter_batches(batch_size=batch):
                for i, row in enumerate(record_batch.to_pylist()):
                    yield _with_text(row, text_field, f"{file.name}:{i}")
            continue
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    yield {"id": f"{file.name}:{n}", "text": None, "domain": "web",
                           "read_error": f"corrupt line {n}: {exc}"}
                    continue
                yield _with_text(row, text_field, f"{file.name}:{n}")


def _with_text(row: dict, text_field: str, fallback_id: str) -> dict:
    row = dict(row)
    if text_field != "text":
        row["text"] = row.pop(text_field, None)
    row.setdefault("id", fallback_id)
    row["id"] = str(row["id"])
    row.setdefault("domain", "web")
    return row


def shards(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    shard = []
    for row in rows:
        shard.append(row)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


# ---------------------------------------------------------------- per-document work (workers)


class Scorer:
    """Everything about a document that does not depend on other documents."""

    def __init__(self, cfg: dict, eval_grams: set, quality: TextClassifier, domains: TextClassifier):
        self.cfg = OmegaConf.create(cfg)
        self.grams, self.quality, self.domains = eval_grams, quality, domains
        self.hasher = MinHasher(self.cfg.minhash_bands, self.cfg.minhash_rows, self.cfg.minhash_ngram)
        self.reference = self.quality.classes.index("reference")

    def __call__(self, doc: dict) -> dict:
        """The document (normalised text, scores) with `reject_reason`, `funnel` (the last step it
        passed) and, for any readable text, its exact key and MinHash signature."""
        cfg, text = self.cfg, doc.get("text")
        out = {**doc, "reject_reason": None, "funnel": "input"}
        if not isinstance(text, str):
            out["reject_reason"] = "unreadable_record" if doc.get("read_error") else "missing_text"
            return out
        text = filters.normalise(text, web=doc["domain"] == "web")
        out["text"] = text
        if not text:
            out["reject_reason"] = "empty_after_normalisation"
            return out
        out["_key"] = filters.dedup_key(text)
        # Templated short texts (stubs, generated problems) and code (shared headers, generated
        # tables) look alike without being copies: they get exact dedup only.
        near = doc["domain"] in cfg.near_dedup_domains and len(text.split()) >= cfg.minhash_min_words
        out["_sig"] = self.hasher.signature(text) if near else None
        probs = self.domains.predict_proba(text)
        out["predicted_domain"] = self.domains.classes[int(np.argmax(probs))]
        if doc["domain"] == "auto":
            out["domain"] = out["predicted_domain"]
        reason = filters.rule_failed(text, out["domain"], cfg)
        if reason:
            out["reject_reason"] = reason
            return out
        out["funnel"] = "heuristics"
        out["quality_score"] = round(float(self.quality.predict_proba(text)[self.reference]), 4)
        if out["domain"] in cfg.quality_domains and out["quality_score"] < cfg.quality_threshold:
            out["reject_reason"] = "quality_classifier"
            return out
        out["funnel"] = "quality"
        cut, hits = filters.decontaminate(text, self.grams, cfg.decontam_ngram, cfg.decontam_mode)
        if cut is None or (hits and filters.rule_failed(cut, out["domain"], cfg)):
            out["reject_reason"] = "contaminated"
            return out
        out["text"], out["contaminated_lines_cut"] = cut, hits
        out["funnel"] = "decontamination"
        return out


_SCORER: Scorer | None = None


def _init_worker(*args) -> None:
    global _SCORER
    _SCORER = Scorer(*args)


def _score_shard(docs: list[dict]) -> list[dict]:
    return [_SCORER(doc) for doc in docs]


def scored_shards(docs: Iterable[dict], cfg, scorer_args: tuple) -> Iterator[list[dict]]:
    """Shards scored in order; with several workers at most 2 shards per worker are in flight."""
    if cfg.workers == 1:
        _init_worker(*scorer_args)
        for shard in shards(docs, cfg.shard_size):
            yield _score_shard(shard)
        return
    with ProcessPoolExecutor(cfg.workers, initializer=_init_worker, initargs=scorer_args) as pool:
        pending = []
        for shard in shards(docs, cfg.shard_size):
            pending.append(pool.submit(_score_shard, shard))
            if len(pending) >= 2 * cfg.workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


# ---------------------------------------------------------------- the whole filter


class FilterRun:
    """Streams documents through the scorer and the deduplicators, writing kept and rejected
    documents shard by shard; keeps only per-document metadata (for the mix) in memory."""

    def __init__(self, cfg, out: Path, kept_name: str = "kept"):
        self.cfg, self.out, self.kept_name = cfg, out, kept_name
        self.exact: dict[str, str] = {}
        self.near = NearDuplicateIndex(cfg.minhash_bands, cfg.minhash_rows, cfg.minhash_threshold)
        self.reasons, self.funnel = Counter(), Counter()
        self.domain_in, self.domain_kept = Counter(), Counter()
        self.kept_meta: list[dict] = []
        self.decontam_cut = 0

    def deduplicate(self, doc: dict) -> None:
        """First occurrence wins, whatever became of it: a copy of a page that a rule rejected is
        still a copy. Only documents that passed every earlier step get a duplicate reason."""
        key, sig = doc.pop("_key", None), doc.pop("_sig", None)
        if key is None:
            return
        passed = doc["reject_reason"] is None
        if key in self.exact:
            if passed:
                doc.update(reject_reason="exact_duplicate", duplicate_of=self.exact[key])
            return
        self.exact[key] = doc["id"]
        match = self.near.find(sig) if sig is not None else None
        if match:
            if passed:
                doc.update(reject_reason="near_duplicate", duplicate_of=match[0],
                           near_duplicate_jaccard=round(match[1], 3), funnel="exact_dedup")
            return
        if sig is not None:
            self.near.add(sig, doc["id"])
        if passed:
            doc["funnel"] = "near_dedup"

    def run(self, docs: Iterable[dict], scorer_args: tuple, total: int | None = None) -> None:
        bar = tqdm(total=total, desc="filter", unit="doc", mininterval=2)
        for i, shard in enumerate(scored_shards(docs, self.cfg, scorer_args)):
            kept, rejected = [], []
            for doc in shard:
                self.deduplicate(doc)
                self.domain_in[doc["domain"]] += 1
                for step in FUNNEL[: FUNNEL.index(doc.pop("funnel")) + 1]:
                    self.funnel[step] += 1
                if doc["reject_reason"] is None:
                    del doc["reject_reason"]
                    kept.append(doc)
                    self.domain_kept[doc["domain"]] += 1
                    self.decontam_cut += bool(doc.get("contaminated_lines_cut"))
                    self.kept_meta.append({"id": doc["id"], "domain": doc["domain"], "chars": len(doc["text"])})
                else:
                    self.reasons[doc["reject_reason"]] += 1
                    rejected.append(doc)
            write_table(kept, self.out / self.kept_name / f"part-{i:05d}.parquet")
            write_table(rejected, self.out / "rejects" / f"part-{i:05d}.parquet")
            bar.update(len(shard))
        bar.close()
        if not self.kept_meta:
            top = self.reasons.most_common(1)
            rule = f"'{top[0][0]}' ({top[0][1]} documents)" if top else "none (no input documents)"
            raise HerdError(f"the filter removed every document; the rule that removed most was {rule}: "
                            f"check its threshold in params.yaml")

    def metrics(self) -> dict:
        m = {"documents_in": self.funnel["input"], "kept": len(self.kept_meta),
             "rejected": sum(self.reasons.values()), "decontam_cut_documents": self.decontam_cut}
        for step in FUNNEL:
            m[f"funnel_{step}"] = self.funnel[step]
        passed_to_dedup = self.funnel["decontamination"] or 1
        m["exact_dup_rate"] = round(self.reasons["exact_duplicate"] / passed_to_dedup, 4)
        m["near_dup_rate"] = round(self.reasons["near_duplicate"] / passed_to_dedup, 4)
        for reason, count in sorted(self.reasons.items()):
            m[f"rejected_{reason}"] = count
        for domain, count in sorted(self.domain_in.items()):
            m[f"kept_frac_{domain}"] = round(self.domain_kept[domain] / count, 4)
        return m


# ---------------------------------------------------------------- classifiers and eval sets


def train_classifiers(docs: Iterable[dict], cfg, seed: int) -> tuple[TextClassifier, TextClassifier, dict]:
    """Quality (reference domains vs raw web) and domain classifiers from a bounded sample of the
    corpus' own labelled documents; returns them with their held-out accuracy."""
    per_class: dict[str, list[tuple[str, str]]] = {}
    for doc in docs:
        text = doc.get("text")
        if isinstance(text, str) and doc.get("domain") != "auto":
            bucket = per_class.setdefault(doc["domain"], [])
            if len(bucket) < cfg.classifier_docs:
                bucket.append((str(doc["id"]), filters.normalise(text)))
    if "web" not in per_class or not set(cfg.reference_domains) & set(per_class):
        raise HerdError("the quality classifier needs web documents and documents of filter.reference_domains "
                        f"({', '.join(cfg.reference_domains)}); the corpus has {', '.join(sorted(per_class))}")
    quality_rows = [(i, t, "reference" if d in cfg.reference_domains else "web")
                    for d, rows in per_class.items() if d in cfg.reference_domains or d == "web" for i, t in rows]
    domain_rows = [(i, t, d) for d, rows in per_class.items() for i, t in rows]
    report = {}
    models = []
    for name, rows, classes in (("quality", quality_rows, ["web", "reference"]),
                                ("domain", domain_rows, sorted(per_class))):
        train = [(t, y) for i, t, y in rows if not in_holdout(i, 0.1)]
        held = [(t, y) for i, t, y in rows if in_holdout(i, 0.1)]
        clf = TextClassifier(classes).fit([t for t, _ in train], [y for _, y in train], cfg.classifier_epochs, seed)
        if held:
            hits = sum(clf.classes[int(np.argmax(clf.predict_proba(t)))] == y for t, y in held)
            report[f"classifier_{name}_heldout_accuracy"] = round(hits / len(held), 4)
        models.append(clf)
    return models[0], models[1], report


def eval_ngrams(files: list[Path], n: int) -> set:
    """n-grams of every string field of every eval record: questions, answers, prompts."""
    grams = set()
    for path in files:
        for row in read_jsonl(path):
            for value in row.values():
                if isinstance(value, str):
                    grams |= filters.ngrams(value, n)
    return grams


def quality_report(files: list[Path], scorer: Scorer) -> dict:
    """Keep/drop against human quality labels (DCLM-style `{"text", "label"}`, 1 = high quality):
    precision and recall of the documents kept as web text."""
    tp = fp = fn = 0
    for path in files:
        for row in read_jsonl(path):
            kept = scorer({"id": "eval", "text": row["text"], "domain": "web"})["reject_reason"] is None
            good = int(row["label"]) == 1
            tp, fp, fn = tp + (kept and good), fp + (kept and not good), fn + (good and not kept)
    return {"labelled_keep_precision": round(tp / max(1, tp + fp), 4),
            "labelled_keep_recall": round(tp / max(1, tp + fn), 4)}


def boilerplate_report(files: list[Path]) -> dict:
    """Boilerplate removal against gold article bodies (`{"text", "article_body"}`): word-level
    precision and recall of what normalisation keeps, and the precision of the raw page."""
    kept_hits = kept_total = gold_total = raw_hits = raw_total = 0
    for path in files:
        for row in read_jsonl(path):
            gold = Counter(filters.WORD.findall(row["article_body"].lower()))
            raw = Counter(filters.WORD.findall(row["text"].lower()))
            kept = Counter(filters.WORD.findall(filters.normalise(row["text"], web=True).lower()))
            kept_hits += sum((kept & gold).values())
            kept_total += sum(kept.values())
            gold_total += sum(gold.values())
            raw_hits += sum((raw & gold).values())
            raw_total += sum(raw.values())
    return {"boilerplate_precision": round(kept_hits / max(1, kept_total), 4),
            "boilerplate_recall": round(kept_hits / max(1, gold_total), 4),
            "boilerplate_precision_raw_page": round(raw_hits / max(1, raw_total), 4)}


def write_mix(run: FilterRun, out: Path, weights: dict, seed: int) -> dict:
    """Split kept documents into validation (stable by id) and train, the train part mixed to the
    domain weights, streaming shard by shard."""
    cfg = run.cfg
    validation = {m["id"] for m in run.kept_meta if in_holdout(m["id"], cfg.validation_frac)}
    chosen, shares = filters.mix([m for m in run.kept_meta if m["id"] not in validation], weights, seed,
                                 cfg.max_repeats, cfg.starved_ratio)
    copies = {doc["id"]: n for doc, n in chosen}
    counts = Counter()
    for shard in sorted((out / run.kept_name).glob("part-*.parquet")):
        rows = pq.read_table(shard).to_pylist()
        train = [row for row in rows for _ in range(copies.get(row["id"], 0))]
        counts["train"] += write_table(train, out / "train" / shard.name)
        counts["validation"] += write_table([r for r in rows if r["id"] in validation], out / "validation" / shard.name)
    metrics = {"train_documents": counts["train"], "validation_documents": counts["validation"],
               "unmixed_domains": ",".join(sorted(set(run.domain_kept) - {d for d, w in weights.items() if w > 0}))}
    metrics.update({f"mix_share_{d}": round(s, 4) for d, s in shares.items()})
    return metrics


# ---------------------------------------------------------------- the stage and the CLI


def run() -> None:
    with stage_run("filter", inputs=["corpus"]) as st:
        cfg = st.cfg.filter
        corpus = st.input("corpus")
        documents = corpus / "documents.parquet"
        total = pq.ParquetFile(documents).metadata.num_rows
        quality, domains, report = train_classifiers(read_documents(documents), cfg, st.seed)
        quality.save(st.out / "classifiers", "quality")
        domains.save(st.out / "classifiers", "domain")
        evals = sorted((corpus / "evals").glob("math_test.jsonl")) + [st.root / f for f in cfg.decontam_files]
        scorer_args = (OmegaConf.to_container(cfg), eval_ngrams(evals, cfg.decontam_ngram), quality, domains)
        filt = FilterRun(cfg, st.out, kept_name=".kept")
        filt.run(read_documents(documents), scorer_args, total)
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


def standalone(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.filter", description="Run Herd's corpus filter on "
                                     "any jsonl(.gz)/parquet file or folder: every kept document and every "
                                     "reject with its reason (no mixing).")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--decontaminate", type=Path, nargs="*", default=[], help="eval jsonl(.gz) files")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--domain", default="web", help="domain of every input document (web, prose, code, "
                        "math, long), 'auto' to let the domain classifier decide, or 'keep' for each "
                        "record's own `domain` field")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="filter params to override")
    args = parser.parse_args(argv)
    if not args.input.exists():
        raise HerdError(f"input {args.input} does not exist")
    if args.output.exists() and any(args.output.iterdir()):
        raise HerdError(f"output folder {args.output} is not empty; choose a new one")
    for path in args.decontaminate:
        if not path.is_file():
            raise HerdError(f"decontamination file {path} does not exist")
    params = load_params(project_root() / "params.yaml", [f"filter.{kv}" for kv in args.set])
    cfg = params.filter
    classifiers = project_root() / "artifacts" / "filter" / "classifiers"
    if (classifiers / "quality.json").is_file():
        quality, domains = TextClassifier.load(classifiers, "quality"), TextClassifier.load(classifiers, "domain")
    else:  # no pipeline run here: train the classifiers on the built-in corpus
        from herd import corpus

        quality, domains, _ = train_classifiers(corpus.builtin_corpus(params.corpus, params.seed), cfg, params.seed)

    def docs():
        for doc in read_documents(args.input, args.text_field):
            doc["domain"] = doc.get("domain") if args.domain == "keep" else args.domain
            yield doc

    args.output.mkdir(parents=True, exist_ok=True)
    filt = FilterRun(cfg, args.output)
    filt.run(docs(), (OmegaConf.to_container(cfg), eval_ngrams(args.decontaminate, cfg.decontam_ngram),
                      quality, domains))
    metrics = filt.metrics()
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"kept {metrics['kept']} of {metrics['documents_in']} documents -> {args.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        try:
            standalone(sys.argv[1:])
        except HerdError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    else:
        main(run)
