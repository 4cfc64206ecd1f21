"""`herd filter`: the corpus filter's rules on any file, outside the pipeline.

    herd filter --input pages.jsonl.gz --output filtered/ --decontaminate ../shared/data/gsm8k/test.jsonl.gz

writes filtered/kept/, filtered/rejects/ (each document with its reject_reason) and
filtered/metrics.json. Params come from the project's params.yaml (`--set key=value` overrides a
filter param); the classifiers are the last pipeline run's, or trained on the built-in corpus.
"""

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from herd.config import load_sections
from herd.data import corpus
from herd.data.classifier import TextClassifier
from herd.data.domains import check_domain
from herd.data.filter import FilterConfig, FilterRun, eval_ngrams, train_classifiers
from herd.data.io import read_records
from herd.errors import HerdError
from herd.runtime.config import RuntimeConfig
from herd.runtime.env import project_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="a jsonl(.gz)/parquet file or a folder of them")
    parser.add_argument("--output", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--decontaminate", type=Path, nargs="*", default=[], help="eval jsonl(.gz) files")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--domain", default="auto", help="'auto' (default): route each document by its content "
                        "(code only when it parses as code; every route passes the common rules); or one "
                        "domain for every document (web, prose, code, math, long); or 'keep' for each "
                        "record's own `domain` field")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="filter params to override")


def run(args: argparse.Namespace) -> None:
    if args.domain not in ("auto", "keep"):
        check_domain(args.domain, "--domain")
    if not args.input.exists():
        raise HerdError(f"input {args.input} does not exist")
    if args.output.exists() and any(args.output.iterdir()):
        raise HerdError(f"output folder {args.output} is not empty; choose a new one")
    for path in args.decontaminate:
        if not path.is_file():
            raise HerdError(f"decontamination file {path} does not exist")
    root = project_root()
    params = load_sections(root / "params.yaml", {"seed": int, "corpus": corpus.CorpusConfig,
                                                  "filter": FilterConfig, "runtime": RuntimeConfig},
                           [f"filter.{kv}" for kv in args.set])
    cfg = params.filter
    classifiers = root / "artifacts" / "filter" / "classifiers"
    if (classifiers / "quality.json").is_file():
        quality, domains = TextClassifier.load(classifiers, "quality"), TextClassifier.load(classifiers, "domain")
    else:  # no pipeline run here: train the classifiers on the built-in corpus
        quality, domains, _ = train_classifiers(corpus.builtin_corpus(params.corpus, params.seed), cfg, params.seed)

    def docs():
        for doc in read_records(args.input, args.text_field):
            doc["domain"] = (doc.get("domain") or "auto") if args.domain == "keep" else args.domain
            yield doc

    args.output.mkdir(parents=True, exist_ok=True)
    filt = FilterRun(cfg, args.output, workers=params.runtime.filter.workers,
                     shard_size=params.runtime.filter.shard_size)
    filt.run(docs(), (OmegaConf.to_container(cfg), eval_ngrams(args.decontaminate, cfg.decontam_ngram),
                      quality, domains))
    metrics = filt.metrics()
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"kept {metrics['kept']} of {metrics['documents_in']} documents -> {args.output}")
