"""Context extension and annealing: the generated long-context tasks, retrieval measured as greedy
decoding would, replay against forgetting, and exact resume of both stages after a kill."""

import json
import random
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from herd.data.long_tasks import TASKS, TaskMaker, TaskRows
from herd.evals.answers import answer_scores
from herd.evals.long_context import grid_metrics, needle_grid
from herd.model.llama import Llama, LlamaConfig
from herd.post.generate import greedy
from tests.conftest import kill_once_written, project_env, set_param

pytestmark = pytest.mark.xdist_group("pipeline-b")  # see pyproject.toml's addopts


class Characters:
    """A tokenizer of characters (ids = code points); the haystack's ids are beyond ASCII."""

    def encode(self, text):
        return type("Encoding", (), {"ids": [ord(c) for c in text]})()

    def decode(self, ids):
        return "".join(map(chr, ids))


@pytest.fixture
def maker():
    return TaskMaker(Characters(), np.arange(1000, 9000) % 97 + 200)


@pytest.mark.parametrize("kind", TASKS)
@pytest.mark.parametrize("length", [256, 700])
def test_a_task_is_exactly_as_long_as_asked_and_its_answer_is_in_the_context(maker, kind, length):
    task = maker.make(kind, length, 0.5, random.Random(0))
    assert len(task.ids) == length and task.answer
    if kind == "qa":  # the answer is the text that follows the quoted passage
        assert any(task.prompt[i : i + len(task.answer)] == task.answer for i in range(len(task.prompt)))
    else:  # every number asked was hidden in the context
        numbers = [w for w in maker.tok.decode(task.answer).replace(",", " ").split()]
        context = maker.tok.decode(task.prompt).replace(".", " ").split()
        assert all(n in context for n in numbers)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_the_needle_sits_at_the_asked_depth(maker, depth):
    task = maker.make("passkey", 1000, depth, random.Random(1))
    needle = maker.enc(" The pass key is")
    at = next(i for i in range(len(task.prompt)) if task.prompt[i : i + len(needle)] == needle)
    assert abs(at / len(task.prompt) - depth) < 0.1


def test_task_rows_are_a_pure_function_of_the_step(maker):
    rows = TaskRows(maker, {"passkey": 1.0, "kv": 1.0}, 3, "seed")
    assert rows(5, 256) == rows(5, 256) != rows(6, 256)
    assert [len(r) for r in rows(5, 256)] == [257] * 3


def test_retrieval_is_what_greedy_decoding_produces(maker):
    """Teacher-forced exact match equals free greedy decoding: checked on a model made to copy."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=400, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    model.init_weights(0.5)
    tasks = [maker.make(kind, 256, 0.3, random.Random(i)) for i, kind in enumerate(TASKS * 3)]
    # Make some tasks right by construction: an answer equal to the model's own greedy continuation.
    for t in tasks[::2]:
        t.answer = greedy(model, [t.prompt], len(t.answer), (), precision="fp32")[0]
    hits, losses = answer_scores(model, [(t.prompt, t.answer) for t in tasks], "fp32")
    free = [greedy(model, [t.prompt], len(t.answer), (), precision="fp32")[0] == t.answer for t in tasks]
    assert hits == free and any(hits) and not all(hits)
    assert all(np.isfinite(losses))


def test_the_grid_covers_every_kind_length_and_depth(maker):
    model = Llama(LlamaConfig(vocab_size=400, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    rows = needle_grid(model, maker, [256, 384], 3, 2, 7, "fp32")
    assert len(rows) == len(TASKS) * 2 * 3
    assert rows == needle_grid(model, maker, [256, 384], 3, 2, 7, "fp32")  # every model is asked the same
    metrics = grid_metrics(rows)
    assert {f"retrieval_{k}_len{n}" for k in TASKS for n in (256, 384)} | {"answer_loss_len256", "answer_loss_len384"} \
        == set(metrics)


# ---------------------------------------------------------------- the stages, on the tiny project


@pytest.fixture(scope="module")
def project(pipeline_project, tmp_path_factory):
    """The tiny project as its first run left it, in a folder of this module's own."""
    folder = tmp_path_factory.mktemp("long") / "project"
    shutil.copytree(pipeline_project.parent / "after_first_run", folder, symlinks=True)
    return folder


def repro(project, stage, *flags):
    return subprocess.run(["dvc", "repro", "--single-item", *flags, stage], cwd=project, env=project_env(project),
                          check=True, capture_output=True, text=True)


def metrics(project, stage):
    return json.loads((project / "artifacts" / stage / "metrics.json").read_text())


def test_replay_keeps_more_of_the_short_context_skills(project):
    """Forgetting: the rise of the held-out loss of the domains extend does not target (math,
    prose), from pretrain's. With replay off it is larger than with replay on."""
    original = (project / "params.yaml").read_text()
    config = json.loads((project / "artifacts" / "pretrain" / "model" / "config.json").read_text())
    short = config["herd"]["max_seq_len"]
    before = metrics(project, "pretrain")
    forgetting = {}
    try:
        for replay in (0.0, 0.5):
            set_param(project, "extend.replay_frac", replay)
            repro(project, "extend")
            after = metrics(project, "extend")
            forgetting[replay] = np.mean([after[f"val_loss_{d}_len{short}"] - before[f"val_loss_{d}_len{short}"]
                                          for d in ("math", "prose")])
    finally:
        (project / "params.yaml").write_text(original)
    assert forgetting[0.0] > forgetting[0.5], forgetting


@pytest.mark.parametrize("stage, phase", [("extend", "step1"), ("anneal", "latest")])
def test_a_killed_stage_resumes_to_the_weights_of_an_uninterrupted_run(project, stage, phase):
    original = (project / "params.yaml").read_text()
    if stage == "extend":  # long enough phases to be killed inside the second one
        set_param(project, "extend.steps", [{"seq_len": 128, "tokens": 8192, "rope_base": 40000.0},
                                            {"seq_len": 256, "tokens": 40960, "rope_base": 100000.0}])
    else:
        set_param(project, "anneal.steps", 40)
    state = project / ".herd" / "checkpoints" / stage / phase / "state.json"
    shutil.rmtree(project / ".herd" / "checkpoints" / stage, ignore_errors=True)
    try:
        kill_once_written(project, stage, state)
        resumed = repro(project, stage)
        assert "resuming from step" in resumed.stdout + resumed.stderr
        weights = load_file(str(project / "artifacts" / stage / "model" / "model.safetensors"))
        repro(project, stage, "--force")
        uninterrupted = load_file(str(project / "artifacts" / stage / "model" / "model.safetensors"))
    finally:
        (project / "params.yaml").write_text(original)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)


def test_gsm8k_answer_loss_is_measured_given_the_question(project):
    """With real data: the loss of GSM8K test answers given their questions, for a base model."""
    from herd.data.io import read_jsonl
    from herd.data.tokens import load_tokenizer
    from herd.evals.answers import answer_loss, file_stem
    from herd.model.llama import load_checkpoint
    from herd.post.chat import ChatFormat
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "gsm8k" / "test.jsonl.gz"
    if not path.is_file():
        pytest.skip("../shared/data/gsm8k is not on this machine")
    examples = read_jsonl(path)[:6]
    fmt = ChatFormat(load_tokenizer(project / "artifacts" / "tokenizer"))
    model = load_checkpoint(project / "artifacts" / "pretrain" / "model")
    loss = answer_loss(model, fmt, examples, "fp32")
    swapped = [{"question": a["question"], "answer": b["answer"]}
               for a, b in zip(examples, examples[::-1], strict=True)]
    assert 0 < loss < 20 and answer_loss(model, fmt, swapped, "fp32") != loss
    assert file_stem(str(path)) == "test"


def test_the_averaged_anneal_is_no_worse_than_its_last_checkpoint(project):
    found = metrics(project, "anneal")
    assert found["val_loss_hq_averaged"] <= found["val_loss_hq_last"]
    assert 1 <= found["averaged_checkpoints"] <= 2 and "val_loss_hq_uniform_average" in found


def test_a_step_that_fails_its_gate_is_repeated_up_to_the_budget(project):
    """An unreachable retrieval threshold: each step runs 1 + max_repeats times, then the stage goes
    on and records that the gate did not pass."""
    original = (project / "params.yaml").read_text()
    try:
        set_param(project, "extend.gate", {"retrieval": 1.0, "short_loss_tolerance": 0.5, "max_repeats": 1})
        repro(project, "extend")
    finally:
        (project / "params.yaml").write_text(original)
    found = metrics(project, "extend")
    assert [found[f"gate_{i}_repeats"] for i in (0, 1)] == [1, 1]
    assert [found[f"gate_{i}_passed"] for i in (0, 1)] == [0, 0]
    curve = (project / "artifacts" / "extend" / "curve.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in curve[1:]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # four phases, one continuous curve
