"""The corpus filter: clean, classify, deduplicate, decontaminate and re-mix documents.

Per document, in worker processes (one shard at a time, so memory is bounded by the shard size):
Unicode NFC, mojibake repair and boilerplate removal; Gopher/C4/FineWeb heuristics (code has its
own); a fastText-style quality score (reference text vs raw web) and domain label; decontamination
against every eval set. Then, in document order: exact and MinHash near-duplicate removal, first
occurrence wins. Finally the kept documents are mixed to the domain weights and split.

Every input document ends up either kept or in rejects/ with the rule that dropped it, every
other column carried along. The pipeline stage is tasks/filter.py; the same rules on any file are
`herd filter` (herd/data/filter_cli.py).
"""

from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from omegaconf import OmegaConf
from tqdm import tqdm

from herd.config import ParamError, fraction, non_negative, positive
from herd.data import rules as filters
from herd.data.classifier import TextClassifier
from herd.data.domains import check_domain, check_weights
from herd.data.io import in_holdout, read_jsonl, write_table
from herd.data.minhash import MinHasher, NearDuplicateIndex
from herd.errors import HerdError


@dataclass
class FilterConfig:
    """The filter's recipe (its worker count and shard size are runtime knobs: runtime.filter)."""

    # Gopher / C4 / FineWeb heuristics (code has its own rules, math lower letter/digit thresholds)
    min_words: int = 5  # low: Wikipedia stubs are clean prose
    web_min_words: int = 80  # web pages that short are mostly fragments (DCLM labels: precision 0.60 -> 0.70)
    max_words: int = 100000
    min_mean_word_len: float = 2.5
    max_mean_word_len: float = 12.0
    max_symbol_ratio: float = 0.1  # "#", "..." and "$" per word
    max_digit_frac: float = 0.15  # digits per character (not for math)
    min_stopwords: int = 1  # English stop words a text must have (Gopher: 2, too strict for stubs)
    min_alpha_word_frac: float = 0.6  # words with at least one letter
    math_min_alpha_word_frac: float = 0.4  # worked solutions are full of numbers and operators
    max_duplicate_line_frac: float = 0.3
    max_duplicate_paragraph_frac: float = 0.3
    max_bullet_line_frac: float = 0.9
    max_ellipsis_line_frac: float = 0.3
    max_nonascii_frac: float = 0.2  # mojibake and binary junk that could not be repaired
    repetition_min_words: int = 100  # the n-gram repetition rules apply from this length on
    max_top_ngram_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_frac: dict[int, float] = field(default_factory=lambda: {5: 0.15, 7: 0.13, 10: 0.10})
    min_sentence_lines: int = 1  # lines ending in terminal punctuation natural language needs (fragments have none)
    code_max_line_len: int = 1000
    code_max_duplicate_line_frac: float = 0.5  # real modules repeat `return`, `pass`, `)` lines: up to 0.46 measured
    code_max_duplicate_ngram_frac: dict[int, float] = field(default_factory=lambda: {10: 0.5})
    # model-based quality filter (reference text vs raw web) and domain labels. Its threshold is
    # calibrated on held-out documents to keep quality_reference_recall of the reference text; it
    # drops nothing unless it then raises the held-out keep precision over the rules alone by
    # quality_min_gain.
    quality_reference_recall: float = 0.99
    quality_min_gain: float = 0.02
    quality_domains: list[str] = field(default_factory=lambda: ["web"])
    reference_domains: list[str] = field(default_factory=lambda: ["prose", "code", "math", "long"])
    classifier_docs: int = 3000  # training documents per class, at most
    classifier_epochs: int = 4
    # near-duplicates: MinHash over word n-grams, LSH with bands x rows hashes
    minhash_ngram: int = 5
    minhash_bands: int = 32
    minhash_rows: int = 4
    minhash_threshold: float = 0.65  # estimated Jaccard at which a later document is a duplicate
    minhash_min_words: int = 50  # shorter texts are shingled by characters: one edited word changes most word 5-grams
    minhash_char_ngram: int = 5
    minhash_short_similarity: float = 0.9  # and must match an earlier short text word for word this closely
    line_dedup_min_words: int = 10  # lines this long count in copy-with-additions detection
    # decontamination against every eval set (AFM / GPT-3 style n-gram overlap)
    decontam_ngram: int = 13
    decontam_mode: str = "cut"  # cut the contaminated lines, or drop the whole document
    decontam_files: list[str] = field(default_factory=list)  # extra benchmark jsonl(.gz) files
    # measurements reported in metrics.json (e.g. ../shared/data/web/...): human quality labels
    # ({"text", "label"}) and pages with gold article bodies ({"text", "article_body"})
    quality_eval_files: list[str] = field(default_factory=list)
    boilerplate_eval_files: list[str] = field(default_factory=list)
    # mixing to target domain weights
    weights: dict[str, float] = field(
        default_factory=lambda: {"web": 0.05, "prose": 0.25, "code": 0.2, "math": 0.4, "long": 0.1}
    )
    max_repeats: int = 1  # how often a document may enter the mix (1: no repeats)
    starved_ratio: float = 0.1  # a domain this much scarcer than the best supplied one gives all it has
    validation_frac: float = 0.05

    def check(self, root: Path) -> None:
        non_negative(self, "min_words", "web_min_words", "min_stopwords", "repetition_min_words", "min_sentence_lines",
                     "minhash_min_words", "max_symbol_ratio")
        positive(self, "max_words", "min_mean_word_len", "max_mean_word_len", "code_max_line_len", "classifier_docs",
                 "classifier_epochs", "minhash_ngram", "minhash_char_ngram", "line_dedup_min_words", "minhash_bands",
                 "minhash_rows", "decontam_ngram", "max_repeats")
        fraction(self, "max_digit_frac", "min_alpha_word_frac", "math_min_alpha_word_frac", "max_duplicate_line_frac",
                 "max_duplicate_paragraph_frac", "max_bullet_line_frac", "max_ellipsis_line_frac", "max_nonascii_frac",
                 "code_max_duplicate_line_frac", "minhash_short_similarity", "quality_reference_recall",
                 "quality_min_gain", "minhash_threshold", "starved_ratio", "validation_frac")
        if self.min_mean_word_len >= self.max_mean_word_len:
            raise ParamError("min_mean_word_len", f"must be below max_mean_word_len ({self.max_mean_word_len})")
        if self.validation_frac == 1:
            raise ParamError("validation_frac", "must leave documents to train on (below 1)")
        for key in ("max_top_ngram_frac", "max_duplicate_ngram_frac", "code_max_duplicate_ngram_frac"):
            for n, frac in getattr(self, key).items():
                if n < 1 or not 0 <= frac <= 1:
                    raise ParamError(f"{key}.{n}", f"needs an n-gram size of at least 1 and a share in [0, 1], "
                                                   f"got {frac}")
        for key in ("decontam_files", "quality_eval_files", "boilerplate_eval_files"):
            for i, path in enumerate(getattr(self, key)):
                if not (root / path).exists():
                    raise ParamError(f"{key}[{i}]", f"input file {root / path} does not exist")
        check_weights(self.weights, "weights")
        if self.decontam_mode not in ("cut", "drop"):
            raise ParamError("decontam_mode", f"'{self.decontam_mode}' is not cut or drop")
        for key in ("quality_domains", "reference_domains"):
            for domain in getattr(self, key):
                check_domain(domain, key)



FUNNEL = ("input", "heuristics", "quality", "decontamination", "exact_dedup", "near_dedup")


# ---------------------------------------------------------------- reading


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
        self.hasher = MinHasher(self.cfg.minhash_bands, self.cfg.minhash_rows, self.cfg.minhash_ngram,
                                self.cfg.minhash_min_words, self.cfg.minhash_char_ngram)
        self.reference = self.quality.classes.index("reference")

    def __call__(self, doc: dict) -> dict:
        """The document (normalised text, scores) with `reject_reason`, `funnel` (the last step it
        passed) and, for any readable text, its exact key and MinHash signature."""
        cfg, text = self.cfg, doc.get("text")
        out = {**doc, "reject_reason": None, "funnel": "input"}
        if not isinstance(text, str):
            out["reject_reason"] = "unreadable_record" if doc.get("read_error") else "missing_text"
            return out
        text = filters.repair(text)
        probs = self.domains.predict_proba(text)
        out["predicted_domain"] = self.domains.classes[int(np.argmax(probs))]
        declared = doc["domain"]
        domain = filters.route(text, out["predicted_domain"]) if declared == "auto" else declared
        if domain != "code":
            text = filters.strip_boilerplate(text, web=declared == "web")
        out["text"], out["domain"] = text, domain
        if not text:
            out["reject_reason"] = "empty_after_normalisation"
            return out
        out["_key"] = filters.dedup_key(text)
        words = filters.WORD.findall(text.lower())
        out["_sig"] = self.hasher.signature(words)
        out["_short"] = words if len(words) < cfg.minhash_min_words else None
        # A page routed to web by content is held to the quality classifier, not to the stricter
        # rules for declared web crawls (C4 line filter, web_min_words): it may be a short article.
        rules = "prose" if domain == "web" and declared == "auto" else domain
        reason = filters.rule_failed(text, rules, cfg)
        if reason:
            out["reject_reason"] = reason
            return out
        out["_lines"] = filters.long_line_keys(text, cfg.line_dedup_min_words)  # only kept documents use them
        out["funnel"] = "heuristics"
        out["quality_score"] = round(float(self.quality.predict_proba(text)[self.reference]), 4)
        if domain in cfg.quality_domains and out["quality_score"] < self.quality.threshold:
            out["reject_reason"] = "quality_classifier"
            return out
        out["funnel"] = "quality"
        cut, hits = filters.decontaminate(text, self.grams, cfg.decontam_ngram, cfg.decontam_mode)
        if cut is None or (hits and filters.rule_failed(cut, rules, cfg)):
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


def scored_shards(docs: Iterable[dict], scorer_args: tuple, workers: int, shard_size: int) -> Iterator[list[dict]]:
    """Shards scored in order; with several workers at most 2 shards per worker are in flight."""
    if workers == 1:
        _init_worker(*scorer_args)
        for shard in shards(docs, shard_size):
            yield _score_shard(shard)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=scorer_args) as pool:
        pending = []
        for shard in shards(docs, shard_size):
            pending.append(pool.submit(_score_shard, shard))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


# ---------------------------------------------------------------- the whole filter


class FilterRun:
    """Streams documents through the scorer and the deduplicators, writing kept and rejected
    documents shard by shard; keeps only per-document metadata (for the mix) in memory."""

    def __init__(self, cfg, out: Path, kept_name: str = "kept", workers: int = 1, shard_size: int = 1000):
        self.cfg, self.out, self.kept_name = cfg, out, kept_name
        self.workers, self.shard_size = workers, shard_size
        self.exact: dict[str, str] = {}
        self.lines: dict[str, str] = {}  # long lines of kept documents -> the first such document
        self.short: dict[str, list[str]] = {}  # the words of short texts, to verify their near-duplicates
        self.near = NearDuplicateIndex(cfg.minhash_bands, cfg.minhash_rows, cfg.minhash_threshold)
        self.reasons, self.funnel = Counter(), Counter()
        self.domain_in, self.domain_kept = Counter(), Counter()
        self.kept_meta: list[dict] = []
        self.decontam_cut = 0

    def deduplicate(self, doc: dict) -> None:
        """First occurrence wins, whatever became of it: a copy of a page that a rule rejected is
        still a copy (an edit must not slip it past the rule). Only documents that passed every
        earlier step get a duplicate reason. Near-duplicates join the index, so a copy of a copy
        is caught too. A document whose long lines all appeared in earlier kept documents,
        covering at least half its words, is a near-duplicate as well (CCNet's paragraph dedup):
        MinHash misses a short page copied with a header and footer around it."""
        key, sig, lines = doc.pop("_key", None), doc.pop("_sig", None), doc.pop("_lines", None)
        short = doc.pop("_short", None)
        if key is None:
            return
        passed = doc["reject_reason"] is None
        if key in self.exact:
            if passed:
                doc.update(reject_reason="exact_duplicate", duplicate_of=self.exact[key])
            return
        self.exact[key] = doc["id"]
        match = self.near.find(sig, None if short is None else lambda other: self._word_match(short, other))
        self.near.add(sig, doc["id"])
        if short is not None:
            self.short[doc["id"]] = short
        if not passed:
            return
        if match:
            doc.update(reject_reason="near_duplicate", duplicate_of=match[0],
                       near_duplicate_jaccard=round(match[1], 3), funnel="exact_dedup")
            return
        hashes, covered = lines
        owners = [self.lines.get(h) for h in hashes]
        if hashes and all(owners) and covered >= 0.5:  # a copy with additions: headers, footers, ads
            doc.update(reject_reason="near_duplicate", duplicate_of=owners[0], funnel="exact_dedup")
            return
        for h in hashes:
            self.lines.setdefault(h, doc["id"])
        doc["funnel"] = "near_dedup"

    def _word_match(self, words: list[str], other: str) -> bool:
        """Short texts close by characters are near-duplicates only when they also match word for
        word: templated stubs and generated problems differ in more words than an edited copy."""
        theirs = self.short.get(other)
        return theirs is not None and \
            SequenceMatcher(None, words, theirs, autojunk=False).ratio() >= self.cfg.minhash_short_similarity

    def run(self, docs: Iterable[dict], scorer_args: tuple, total: int | None = None) -> None:
        bar = tqdm(total=total, desc="filter", unit="doc", mininterval=2)
        for i, shard in enumerate(scored_shards(docs, scorer_args, self.workers, self.shard_size)):
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
    corpus' own labelled documents, 10% held out; returns them with their held-out figures."""
    per_class: dict[str, list[tuple[str, str]]] = {}
    for doc in docs:
        text = doc.get("text")
        if isinstance(text, str) and doc.get("domain") != "auto":
            bucket = per_class.setdefault(doc["domain"], [])
            if len(bucket) < cfg.classifier_docs:
                text = filters.repair(text)
                bucket.append((str(doc["id"]), text if doc["domain"] == "code" else filters.strip_boilerplate(text)))
    if "web" not in per_class or not set(cfg.reference_domains) & set(per_class):
        raise HerdError("the quality classifier needs web documents and documents of filter.reference_domains "
                        f"({', '.join(cfg.reference_domains)}); the corpus has {', '.join(sorted(per_class))}")
    report = {}
    models = []
    for name, classes, label in (("quality", ["web", "reference"], lambda d: "web" if d == "web" else "reference"),
                                 ("domain", sorted(per_class), lambda d: d)):
        rows = [(i, t, d) for d, rs in per_class.items() for i, t in rs
                if name == "domain" or d == "web" or d in cfg.reference_domains]
        train = [(t, label(d)) for i, t, d in rows if not in_holdout(i, 0.1)]
        clf = TextClassifier(classes).fit([t for t, _ in train], [y for _, y in train], cfg.classifier_epochs, seed)
        held = [(t, d) for i, t, d in rows if in_holdout(i, 0.1)]
        if held:
            hits = sum(clf.classes[int(np.argmax(clf.predict_proba(t)))] == label(d) for t, d in held)
            report[f"classifier_{name}_heldout_accuracy"] = round(hits / len(held), 4)
        if name == "quality":
            report.update(calibrate_quality(clf, held, cfg))
        models.append(clf)
    return models[0], models[1], report


def calibrate_quality(clf: TextClassifier, held: list[tuple[str, str]], cfg) -> dict:
    """Set the quality threshold from held-out (text, domain) pairs that pass the rules: the score
    that keeps `quality_reference_recall` of the reference text. The classifier keeps that
    threshold only when it raises keep precision (reference kept / all kept, web counted as not
    wanted) over the rules alone by `quality_min_gain`; otherwise its threshold is 0 and it drops
    nothing. Returns the held-out precision and recall of both."""
    ref_col = clf.classes.index("reference")
    passed = [(float(clf.predict_proba(t)[ref_col]), d != "web") for t, d in held if not filters.rule_failed(t, d, cfg)]
    reference = sorted(score for score, good in passed if good)
    web = [score for score, good in passed if not good]
    clf.threshold = 0.0
    figures = {"classifier_quality_heldout_reference": len(reference), "classifier_quality_heldout_web": len(web)}
    if not reference:
        return {**figures, "classifier_quality_enabled": 0}
    threshold = float(reference[int((1 - cfg.quality_reference_recall) * len(reference))])
    kept_ref = sum(score >= threshold for score in reference)
    kept_web = sum(score >= threshold for score in web)
    rules_precision = len(reference) / (len(reference) + len(web))
    precision = kept_ref / max(1, kept_ref + kept_web)
    enabled = precision - rules_precision >= cfg.quality_min_gain
    clf.threshold = threshold if enabled else 0.0
    return {**figures, "classifier_quality_enabled": int(enabled),
            "classifier_quality_threshold": round(clf.threshold, 4),
            "classifier_quality_calibrated_threshold": round(threshold, 4),
            "classifier_quality_rules_keep_precision": round(rules_precision, 4),
            "classifier_quality_keep_precision": round(precision, 4),
            "classifier_quality_keep_recall": round(kept_ref / len(reference), 4)}


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
