"""The recipe, dvc.yaml and the flow are one DAG, and a stage reruns exactly when something it
uses changed. Fast: outputs are recorded with `dvc commit` instead of being computed, and what
would run is DVC's own answer."""

import re
import shutil
import subprocess

import pytest
import yaml

from herd.orchestration import dvc
from herd.recipe import schemas, stages
from tests.conftest import REPO, descendants, make_project, project_env, set_param


def of_tasks(*tasks: str) -> list[str]:
    """The stages that run these tasks (every round's), in recipe order."""
    return [s.name for s in stages(REPO) if s.task in tasks]


def write_stub_dvc_yaml(folder):
    """dvc.yaml as herd generates it (code deps, upstream outputs, params), each command replaced
    by a stub that writes a new output in no time, so the rerun rules are the real ones."""
    text = dvc.render(folder, stages(folder))
    spec = yaml.safe_load(text)["stages"]
    (folder / "dvc.yaml").write_text(re.sub(
        r"cmd: python -m tasks\.\w+ --name (\w+).*", lambda m: f"cmd: {stub_command(spec[m[1]])}", text))
    return spec


def stub_outputs(entry: dict) -> list[str]:
    """Every output a stage's dvc.yaml entry declares: its folder, its metrics file, its plots folder."""
    declared = entry["outs"] + entry.get("metrics", []) + entry.get("plots", [])
    return [out if isinstance(out, str) else next(iter(out)) for out in declared]


def stub_command(entry: dict) -> str:
    return " && ".join(f"echo {{}} > {path}" if path.endswith(".json") else
                       f"mkdir -p {path} && date +%s%N > {path}/out.txt" for path in stub_outputs(entry))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project in a git repository, every stage recorded in dvc.lock as up to date."""
    folder = make_project(tmp_path_factory.mktemp("recipe"), git=True)
    env = project_env(folder)
    spec = write_stub_dvc_yaml(folder)
    for name, entry in spec.items():
        for path in stub_outputs(entry):
            if path.endswith(".json"):
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).write_text("{}")
            else:
                (folder / path).mkdir(parents=True)
                (folder / path / "out.txt").write_text(name)
    subprocess.run(["dvc", "commit", "--force", "-q"], cwd=folder, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "recorded"], cwd=folder, env=env, check=True)
    return folder


@pytest.fixture
def restore(project):
    """Undo a test's edits (the committed state is every stage up to date)."""
    yield project
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=project, check=True)
    subprocess.run(["dvc", "checkout", "--force", "-q"], cwd=project, env=project_env(project), check=True)


def test_dvc_yaml_is_generated_from_the_recipe():
    assert dvc.is_current(REPO, stages(REPO)), "dvc.yaml differs from herd/recipe.py: run `herd dag --write`"


def test_declaration_dvc_yaml_and_flow_are_one_dag():
    declared = {(s.name, up) for s in stages(REPO) for up in s.upstream}
    flow = {(name, up) for name, ups in dvc.graph(REPO).items() for up in ups}
    assert declared == flow
    assert list(dvc.graph(REPO)) == [s.name for s in stages(REPO)]


def test_every_stage_depends_on_exactly_the_files_it_imports():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert dvc.code_deps(REPO, "tasks.filter") == [d for d in spec["filter"]["deps"] if not d.startswith("artifacts")]
    assert "herd/data/minhash.py" in spec["filter"]["deps"]
    importers = [name for name, entry in spec.items() if "herd/data/minhash.py" in entry["deps"]]
    assert importers == ["filter"]  # the dedup index is the filter's alone
    assert all("herd/recipe.py" not in entry["deps"] for entry in spec.values())


def test_a_fresh_project_says_never_run_here(tmp_path):
    folder = make_project(tmp_path)
    assert {s.name: dvc.why_stale(folder, s.name) for s in stages(folder)} == \
        {s.name: "never run here" for s in stages(folder)}


def test_a_recorded_project_is_up_to_date(project):
    assert dvc.would_run(project) == []


def test_a_clone_without_the_outputs_says_so(restore):
    """main's dvc.lock records a run whose outputs a fresh clone does not have."""
    shutil.rmtree(restore / "artifacts" / "corpus")
    assert dvc.why_stale(restore, "corpus") == "no output here yet; dvc.lock records a run made elsewhere"


BASE_EVALS = ["eval_pretrain", "eval_extend", "eval_extend_control", "eval_anneal", "eval_anneal_control"]


EVALS = ("evaluate_base", "evaluate_reward", "evaluate_policy")


@pytest.mark.parametrize("file, first", [
    ("tasks/dpo.py", of_tasks("dpo")),
    ("herd/post/dpo.py", of_tasks("dpo", "dpo_control")),
    ("herd/data/minhash.py", ["filter"]),
    ("herd/evals/measures.py", of_tasks(*EVALS)),
    ("herd/post/generate.py", of_tasks("reward", "rejection_sample", *EVALS)),  # reward samples the base
    ("herd/evals/long_context.py", ["extend", "extend_control", *BASE_EVALS]),
    # reward scoring: the reward model's held-out accuracy, sampling, and the evaluations that need a
    # judge (not the base models')
    ("herd/post/scoring.py", of_tasks("reward", "rejection_sample", "evaluate_reward", "evaluate_policy")),
])
def test_editing_code_reruns_its_importers_and_their_descendants(restore, file, first):
    with open(restore / file, "a") as fh:
        fh.write("\n# an edit\n")
    assert dvc.would_run(restore) == descendants(first)


def test_a_section_schema_is_imported_only_by_the_stages_that_read_it():
    """So editing section Y's schema reruns only the readers of Y (and what they feed)."""
    import inspect

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for section, schema in schemas(stages(REPO)).items():
        if not inspect.isclass(schema) or schema is int:
            continue
        file = inspect.getfile(schema).removeprefix(str(REPO) + "/")
        importers = {name for name, entry in spec.items() if file in entry["deps"]}
        readers = {name for name, entry in spec.items() if section in entry.get("params", [])}
        if section == "runtime":
            continue  # read by every stage, and no stage reruns for its values
        assert importers <= readers, f"{file} (schema of {section}) is imported by {importers - readers}"


def test_editing_the_dpo_schema_reruns_the_dpo_stages_what_follows_them_and_their_evaluations(restore):
    path = restore / "herd" / "post" / "dpo.py"
    path.write_text(path.read_text().replace("    beta: float = 0.1", "    beta: float = 0.1  # edited"))
    assert dvc.would_run(restore) == descendants(of_tasks("dpo", "dpo_control"))


@pytest.mark.parametrize("knob, value", [
    ("runtime.filter.workers", 1), ("runtime.filter.shard_size", 7), ("runtime.train.checkpoint_every", 3),
    ("runtime.train.log_every", 1), ("runtime.train.nproc_per_node", 2), ("runtime.train.compile", True),
    ("runtime.tracking.uri", "http://127.0.0.1:5000"), ("runtime.tracking.experiment", "other"),
])
def test_runtime_knobs_rerun_nothing(restore, knob, value):
    set_param(restore, knob, value)
    assert dvc.would_run(restore) == []


@pytest.mark.parametrize("knob, value, first", [
    ("dpo.beta", 0.2, of_tasks("dpo", "dpo_control")),
    ("anneal.lr", 0.002, ["anneal", "anneal_control"]),
    ("extend.gate.max_repeats", 2, ["extend", "extend_control"]),
    ("evaluate.math_problems", 3, of_tasks(*EVALS)),
    ("filter.min_words", 6, ["filter"]),
])
def test_a_param_reruns_its_readers_and_their_descendants(restore, knob, value, first):
    set_param(restore, knob, value)
    assert dvc.would_run(restore) == descendants(first)


@pytest.mark.parametrize("knob, value", [
    ("anneal.lr", 0.002), ("anneal.mix", {"math": 1.0}), ("anneal.average_last", 1), ("anneal.steps", 12),
])
def test_an_anneal_knob_never_reruns_pretrain_or_extend(restore, knob, value):
    set_param(restore, knob, value)
    stale = dvc.would_run(restore)
    assert "anneal" in stale and not {"corpus", "filter", "tokenizer", "pretrain", "extend", "extend_control",
                                      "eval_pretrain", "eval_extend", "eval_extend_control"} & set(stale)


def test_a_data_value_probe_is_one_params_entry(restore):
    """anneal.probes.<name> adds an annealing stage on that candidate mix and its evaluation, judged
    against the anneal control; nothing that exists reruns but the report and the stages that read
    `anneal` (whose section changed)."""
    set_param(restore, "anneal.probes", {"math_only": {"math": 1.0}})
    names = [s.name for s in stages(restore)]
    assert {"anneal_probe_math_only", "eval_anneal_probe_math_only"} <= set(names)
    probe = next(s for s in stages(restore) if s.name == "anneal_probe_math_only")
    assert probe.task == "anneal_probe" and probe.upstream == ["extend", "tokenizer"]
    write_stub_dvc_yaml(restore)
    stale = dvc.would_run(restore)
    assert {"anneal_probe_math_only", "eval_anneal_probe_math_only", "report"} <= set(stale)
    assert not {"pretrain", "extend", "extend_control", "eval_extend"} & set(stale)


def test_dpo_beta_reruns_only_the_dpo_stages_what_follows_them_and_their_evaluations(restore):
    set_param(restore, "dpo.beta", 0.2)
    stale = dvc.would_run(restore)
    assert stale == descendants(["dpo", "dpo_control", "dpo_r2"])
    assert stale[:3] == ["dpo", "dpo_control", "rejection_sample_r2"] and "reward" not in stale and "sft" not in stale


def test_another_round_adds_only_its_stages(restore):
    set_param(restore, "post.rounds", 3)
    write_stub_dvc_yaml(restore)
    round_three = ["rejection_sample_r3", "sft_r3", "dpo_pairs_r3", "dpo_r3", "eval_sft_r3", "eval_dpo_r3"]
    # The report gathers every evaluation, so it gains the round's two.
    assert dvc.would_run(restore) == round_three + ["report"]
    graph = dvc.graph(restore)
    # Round 3 samples from round 2's policy, its committee reaching back to the policies before it.
    assert set(graph["rejection_sample_r3"]) == {"corpus", "filter", "reward", "dpo_r2", "dpo", "anneal"}
    assert set(graph["sft_r3"]) == {"dpo_r2", "rejection_sample_r3"}
    # DPO's pairs are the fine-tuned policy's own samples; it is averaged with the previous policy.
    assert set(graph["dpo_pairs_r3"]) == {"corpus", "filter", "reward", "sft_r3"}
    assert set(graph["dpo_r3"]) == {"sft_r3", "dpo_pairs_r3", "dpo_r2"}


def test_dvc_repro_and_dvc_exp_run_agree_with_herd(restore):
    """What `herd status` predicts is what `dvc repro` runs and `dvc exp run -S` reruns (the stubs run
    for real); the experiment repeats the same change, so DVC's run-cache restores those stages."""
    env = project_env(restore)
    running = re.compile(r"Running stage '(\w+)'")
    restored = re.compile(r"Stage '(\w+)' is cached - skipping run")
    set_param(restore, "dpo.beta", 0.3)
    herd = dvc.would_run(restore)
    repro = subprocess.run(["dvc", "repro"], cwd=restore, env=env, capture_output=True, text=True, check=True)
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=restore, check=True)
    subprocess.run(["dvc", "checkout", "--force", "-q"], cwd=restore, env=env, check=True)
    exp = subprocess.run(["dvc", "exp", "run", "-S", "dpo.beta=0.3"], cwd=restore, env=env, capture_output=True,
                         text=True, check=True)
    assert herd == running.findall(repro.stdout) == restored.findall(exp.stdout) == descendants(
        of_tasks("dpo", "dpo_control"))
    assert running.findall(exp.stdout) == []


def test_an_experiment_runs_the_code_as_it_stands_and_keeps_its_logs(restore):
    """`herd exp run` takes this checkout's uncommitted edits and untracked files into its
    workspace (a worktree of HEAD), as `dvc exp run` does; a failed run's stage logs stay here."""
    from herd.orchestration import experiments

    with (restore / "herd" / "config.py").open("a") as f:
        f.write("# an uncommitted edit\n")
    untracked = restore / "tasks" / "scratch.py"
    untracked.write_text("DRAFT = 1\n")
    try:
        workspace = experiments.prepare(restore, {"dpo.beta": 0.3}, "carry")
        try:
            assert (workspace / "herd" / "config.py").read_text() == (restore / "herd" / "config.py").read_text()
            assert (workspace / "tasks" / "scratch.py").read_text() == "DRAFT = 1\n"
            assert yaml.safe_load((workspace / "params.yaml").read_text())["dpo"]["beta"] == 0.3
            (workspace / ".herd" / "logs").mkdir(parents=True)
            (workspace / ".herd" / "logs" / "dpo.log").write_text("diverged")
            kept = experiments.keep_logs(restore, workspace, "carry")
        finally:
            experiments.remove(restore, workspace)
        assert not workspace.exists() and (kept / "dpo.log").read_text() == "diverged"
    finally:
        untracked.unlink()


def test_a_held_out_answer_file_is_a_dependency_of_the_base_model_evaluations(restore):
    (restore / "heldout.jsonl").write_text('{"question": "What is 2 + 3?", "answer": "2 + 3 = 5. #### 5"}\n')
    set_param(restore, "evaluate.answer_loss_files", ["heldout.jsonl"])
    write_stub_dvc_yaml(restore)
    spec = yaml.safe_load((restore / "dvc.yaml").read_text())["stages"]
    assert [name for name, entry in spec.items() if "heldout.jsonl" in entry["deps"]] == BASE_EVALS
    assert set(dvc.would_run(restore)) == {*BASE_EVALS, *of_tasks("evaluate_reward", "evaluate_policy"), "report"}
