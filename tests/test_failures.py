"""Every failure clear, prompt and recorded: a malformed param is refused with one line naming its
key, and stops `herd run` before any work; unreadable source records are counted rejects with their line; local
sources are dependencies; a second `herd run` on a checkout is refused, naming the first."""

import gzip
import json
import subprocess
import sys
import time

import pytest
import yaml

from herd.data.corpus import SourceConfig
from herd.data.io import load_source, read_records
from herd.errors import HerdError
from herd.orchestration import dvc
from herd.orchestration.session import exclusive_run
from herd.recipe import check_params
from tests.conftest import make_project, project_env, set_param

BAD_PARAMS = [
    ("pretrain.steps", -5, "pretrain.steps"),
    ("pretrain.batch_size", 0, "pretrain.batch_size"),
    ("pretrain.micro_batch_size", 3, "pretrain.batch_size"),
    ("pretrain.lr", float("inf"), "pretrain.lr"),
    ("pretrain.seq_len_ramp", [{"until_tokens": 10, "value": 9999}], "pretrain.seq_len_ramp[0].value"),
    ("pretrain.distill.weight", 1.5, "pretrain.distill.weight"),
    ("sft.batch_size", 0, "sft.batch_size"),
    ("sft.seq_len", 0, "sft.seq_len"),
    ("sft.warmup_steps", 1000, "sft.warmup_steps"),
    ("dpo.lr", float("nan"), "dpo.lr"),
    ("dpo.beta", 0, "dpo.beta"),
    ("dpo.betta", 0.1, "dpo.betta"),
    ("anneal.lr", -0.001, "anneal.lr"),
    ("anneal.average_last", 0, "anneal.average_last"),
    ("extend.steps", [{"seq_len": 32, "tokens": 10000, "rope_base": 1e5}], "extend.steps[0].seq_len"),
    ("extend.steps", [{"seq_len": 512, "tokens": 100, "rope_base": 1e5}], "extend.steps[0].tokens"),
    ("extend.steps", [{"seq_len": 512, "tokens": 10**6, "rope_base": 1e5, "rope_scaling": "yarn"}],
     "extend.steps[0].rope_scaling"),
    ("extend.tasks", {"sudoku": 1.0}, "extend.tasks"),
    ("anneal.probes", {"bad name": {"math": 1.0}}, "anneal.probes.bad name"),
    ("extend.replay_frac", 1.5, "extend.replay_frac"),
    ("tokenizer.vocab_size", 10, "tokenizer.vocab_size"),
    ("model.n_heads", 5, "model.n_heads"),
    ("model.n_kv_heads", 3, "model.n_kv_heads"),
    ("model.dim", 0, "model.dim"),
    ("filter.validation_frac", 2.0, "filter.validation_frac"),
    ("filter.minhash_threshold", 1.5, "filter.minhash_threshold"),
    ("filter.quality_reference_recall", 1.5, "filter.quality_reference_recall"),
    ("filter.min_mean_word_len", 20.0, "filter.min_mean_word_len"),
    ("filter.weights", {"web": -1.0}, "filter.weights.web"),
    ("corpus.math_test_problems", 0, "corpus.math_test_problems"),
    ("reward.heldout_frac", 1.5, "reward.heldout_frac"),
    ("rejection_sample.k", 1, "rejection_sample.k"),
    ("rejection_sample.temperature", -1.0, "rejection_sample.temperature"),
    ("train.precision", "fp8", "train.precision"),
    ("evaluate.needle_depths", 0, "evaluate.needle_depths"),
    ("evaluate.context_lengths", [16], "evaluate.context_lengths"),
    ("post.rounds", 0, "post.rounds"),
    ("runtime.train.divergence_factor", 0.5, "runtime.train.divergence_factor"),
    ("runtime.train.divergence_min_rise", -1, "runtime.train.divergence_min_rise"),
    ("runtime.filter.workers", 0, "runtime.filter.workers"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("failures"))


@pytest.mark.parametrize("key, value, named", BAD_PARAMS, ids=[k for k, _, _ in BAD_PARAMS])
def test_malformed_param_is_refused_naming_its_key(project, key, value, named):
    original = (project / "params.yaml").read_text()
    try:
        set_param(project, key, value)
        with pytest.raises(HerdError) as err:
            check_params(project)
    finally:
        (project / "params.yaml").write_text(original)
    assert str(err.value).startswith(f"params.yaml: {named}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("key, value, named", [BAD_PARAMS[0], BAD_PARAMS[11], BAD_PARAMS[-1]],
                         ids=["pretrain", "unknown-key", "runtime"])
def test_malformed_param_stops_herd_run_before_any_work(project, key, value, named):
    original = (project / "params.yaml").read_text()
    try:
        set_param(project, key, value)
        proc = subprocess.run([sys.executable, "-m", "herd.cli", "run"], cwd=project, env=project_env(project),
                              capture_output=True, text=True, timeout=120)
    finally:
        (project / "params.yaml").write_text(original)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: params.yaml: {named}: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (project / "artifacts").exists() and not (project / ".herd" / "logs").exists()


def test_herd_status_validates_too(project):
    original = (project / "params.yaml").read_text()
    try:
        (project / "params.yaml").write_text(original + "filtr: {min_words: 3}\n")
        proc = subprocess.run([sys.executable, "-m", "herd.cli", "status"], cwd=project, env=project_env(project),
                              capture_output=True, text=True, timeout=120)
    finally:
        (project / "params.yaml").write_text(original)
    assert proc.returncode == 2 and proc.stderr.startswith("error: params.yaml: filtr: ")


def write_messy_source(path):
    good = [{"id": f"good{i}", "text": f"Document number {i} is perfectly fine prose."} for i in range(3)]
    lines = [json.dumps(good[0]).encode(), b"{not json", json.dumps(good[1]).encode(), b"\xff\xfe{\"text\": \"x\"}",
             b"\x00\x01\x02binary\x03", json.dumps({"id": "num", "text": 42}).encode(), b"", b"[1, 2]",
             json.dumps(good[2]).encode(), b"{}"]
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")


def test_bad_source_records_are_counted_rejects_with_their_line(tmp_path):
    write_messy_source(tmp_path / "docs.jsonl.gz")
    records = list(load_source(SourceConfig(path="docs.jsonl.gz", domain="prose"), tmp_path))
    kept = [r["id"] for r in records if r["text"]]
    errors = {r["id"]: r["read_error"] for r in records if r.get("read_error")}
    assert kept == ["good0", "good1", "good2"]
    assert errors == {
        "docs.jsonl.gz:2": errors["docs.jsonl.gz:2"], "docs.jsonl.gz:4": errors["docs.jsonl.gz:4"],
        "docs.jsonl.gz:5": errors["docs.jsonl.gz:5"], "num": "line 6: field 'text' is a int, not text",
        "docs.jsonl.gz:8": errors["docs.jsonl.gz:8"],
    }
    assert errors["docs.jsonl.gz:2"].startswith("line 2: not a JSON object")
    assert errors["docs.jsonl.gz:4"].startswith("line 4: not UTF-8")
    assert errors["docs.jsonl.gz:8"].startswith("line 8: not a JSON object (a JSON list")
    empty = [r for r in records if r["id"] == "docs.jsonl.gz:10"]
    assert empty[0]["text"] is None  # no text at all: the filter rejects it as missing_text
    assert all(r["domain"] == "prose" and r["source"] == "docs.jsonl.gz" for r in records)


def test_parquet_records_read_like_lines(tmp_path):
    from herd.data.io import write_table

    write_table([{"id": "a", "text": "fine"}, {"id": "b", "text": None}], tmp_path / "t.parquet")
    records = list(read_records(tmp_path / "t.parquet"))
    assert [r["text"] for r in records] == ["fine", None]


def test_a_local_source_is_a_dependency_of_the_corpus_stage(tmp_path):
    project = make_project(tmp_path)
    (project / "data").mkdir()
    write_messy_source(project / "data" / "docs.jsonl.gz")
    set_param(project, "corpus.sources", [{"path": "data/docs.jsonl.gz", "domain": "prose"}])
    from herd.recipe import stages

    dvc.write(project, stages(project))
    corpus = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["corpus"]
    assert "data/docs.jsonl.gz" in corpus["deps"]
    env = project_env(project)
    (project / "artifacts" / "corpus").mkdir(parents=True)
    subprocess.run(["dvc", "commit", "--force", "-q", "corpus"], cwd=project, env=env, check=True)
    assert dvc.why_stale(project, "corpus") is None
    with gzip.open(project / "data" / "docs.jsonl.gz", "ab") as fh:
        fh.write(json.dumps({"text": "One more document appended later."}).encode() + b"\n")
    assert "data/docs.jsonl.gz" in dvc.why_stale(project, "corpus")
    proc = subprocess.run([sys.executable, "-m", "herd.cli", "status"], cwd=project, env=env, capture_output=True,
                          text=True, check=True)
    assert "corpus               would run (changed deps: data/docs.jsonl.gz modified)" in proc.stdout


def test_a_missing_local_source_fails_at_once_with_its_name(tmp_path):
    project = make_project(tmp_path)
    (project / "data").mkdir()
    set_param(project, "corpus.sources", [{"path": "data/missing", "domain": "prose"}])
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "herd.cli", "check"], cwd=project, env=project_env(project),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and time.time() - started < 30
    assert "corpus.sources[0].path: input file" in proc.stderr and "data/missing does not exist" in proc.stderr


def test_a_second_run_is_refused_naming_the_first(tmp_path):
    project = make_project(tmp_path)
    with exclusive_run(project, wait=False):
        with pytest.raises(HerdError, match=r"another herd run is running in .* \(pid \d+, started "):
            with exclusive_run(project, wait=False):
                pass
        proc = subprocess.run([sys.executable, "-m", "herd.cli", "run"], cwd=project, env=project_env(project),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "another herd run is running" in proc.stderr
        assert not (project / "artifacts").exists()
    with exclusive_run(project, wait=False):  # released with its holder
        pass
