"""The whole chain on the tiny config, through the Prefect flow as a user runs it: it completes,
reruns only what changed, tracks every stage in MLflow and registers the two models."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from herd.recipe import stages
from tests.conftest import REPO, kill_once_written, project_env, run_flow, set_param, stage_lines

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline-a")]

ALL = [s.name for s in stages(REPO)]  # tiny.yaml keeps the default number of rounds



def mlflow_client(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / '.herd' / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / '.herd' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_first_run_completes_every_stage_with_its_contract(pipeline_project):
    for stage in ALL:
        folder = pipeline_project / "artifacts" / stage
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["mlflow_run_id"]
        assert json.loads((folder / "metrics.json").read_text())
    report = (pipeline_project / "artifacts" / "report" / "report.md").read_text()
    for stage in ("pretrain", "extend", "anneal", "sft", "dpo"):
        assert f"| {stage} |" in report
    assert "| dpo_control (control of dpo) |" in report  # DPO is judged beside its NLL-only control
    verdicts = json.loads((pipeline_project / "artifacts" / "report" / "verdicts.json").read_text())
    assert "its control dpo_control" in verdicts["dpo"]["sentence"]
    # Pretraining learned something: held-out loss well below the corpus' unigram entropy.
    pre = json.loads((pipeline_project / "artifacts" / "pretrain" / "metrics.json").read_text())
    assert pre["val_loss_mean_len64"] < pre["unigram_entropy"]


def test_first_run_explains_itself_and_runs_every_stage(pipeline_project):
    log = (pipeline_project / ".herd" / "first_run.log").read_text()
    for stage in ALL:
        assert f"[herd] {stage:20s} running  (never run here)" in log


def test_first_run_needed_no_network(pipeline_project):
    from tests.conftest import can_cut_network

    if not can_cut_network():
        pytest.skip("this machine does not allow a network namespace (unshare -n)")
    # The fixture's run happened with only loopback up, and every stage completed.
    assert (pipeline_project / ".herd" / "first_run_offline").read_text() == "True"


def test_second_run_skips_every_stage(pipeline_project):
    started = time.time()
    proc = run_flow(pipeline_project)
    assert stage_lines(proc) == {s: "skipped" for s in ALL}
    assert time.time() - started < 90


def test_a_param_change_reruns_its_readers_and_setting_it_back_restores_them(pipeline_project):
    beta = yaml.safe_load((pipeline_project / "params.yaml").read_text())["dpo"]["beta"]
    set_param(pipeline_project, "dpo.beta", 0.2)
    ran = [s for s, v in stage_lines(run_flow(pipeline_project, "eval_dpo")).items() if v == "running"]
    assert ran == ["dpo", "eval_dpo"]  # up to eval_dpo: the stages dpo.beta reaches on the way

    # Set back: DVC's run-cache restores both instead of running them; nothing else changed.
    set_param(pipeline_project, "dpo.beta", beta)
    proc = run_flow(pipeline_project)
    assert stage_lines(proc) == {s: "running" if s in ("dpo", "eval_dpo") else "skipped" for s in ALL}
    assert "0 ran, 2 restored" in proc.stdout

    # Wider changes (anneal.lr, a filter threshold) are checked against DVC's own answer in seconds
    # by tests/test_recipe.py, which also checks that herd and DVC agree.


def test_every_executed_stage_is_a_nested_mlflow_run(pipeline_project):
    client = mlflow_client(pipeline_project)
    experiment = client.get_experiment_by_name("herd")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.info.run_id for r in runs if r.data.tags.get("herd.stage") == "pipeline"}
    stage_runs = [r for r in runs if r.data.tags.get("herd.stage") != "pipeline"]
    assert parents and stage_runs
    assert all(r.data.tags.get("mlflow.parentRunId") in parents for r in stage_runs)
    first = min(parents, key=lambda p: next(r.info.start_time for r in runs if r.info.run_id == p))
    assert sorted(r.data.tags["herd.stage"] for r in stage_runs if r.data.tags["mlflow.parentRunId"] == first) \
        == sorted(ALL)
    pretrain = next(r for r in stage_runs if r.data.tags["herd.stage"] == "pretrain")
    assert len(client.get_metric_history(pretrain.info.run_id, "loss")) > 1  # per-step metrics


def test_registered_models_resolve_by_alias_and_reproduce_outputs(pipeline_project):
    import mlflow
    import pandas as pd

    from herd.data.tokens import load_tokenizer
    from herd.model.llama import load_checkpoint
    from herd.post.chat import ChatFormat
    from herd.post.scoring import score_responses

    client = mlflow_client(pipeline_project)
    frame = pd.DataFrame({"prompt": ["Ava has 3 apples. How many apples?"] * 2,
                          "response": ["Ava has 3 apples. The answer is 3.", "The answer is 7."]})
    reward_dir = pipeline_project / "artifacts" / "reward" / "model"
    expected = score_responses(load_checkpoint(reward_dir), ChatFormat(load_tokenizer(reward_dir)),
                               list(zip(frame.prompt, frame.response, strict=True)))
    loaded = mlflow.pyfunc.load_model("models:/herd-reward@champion")
    assert loaded.predict(frame) == pytest.approx(expected, abs=1e-5)

    policy = mlflow.pyfunc.load_model("models:/herd-policy@champion")
    answers = policy.predict(frame[["prompt"]], params={"max_new_tokens": 8})
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    version = client.get_model_version_by_alias("herd-policy", "champion")
    chain = {k.split(".")[1] for k in version.tags if k.startswith("lineage.")}
    assert chain >= {"sft", "rejection_sample", "reward", "anneal", "extend", "pretrain", "tokenizer", "filter",
                     "corpus"}
    assert version.tags["lineage.corpus.sources"].startswith("builtin")


def test_every_round_is_registered_and_the_champion_moves_only_on_a_better_policy(pipeline_project):
    client = mlflow_client(pipeline_project)
    versions = sorted(client.search_model_versions("name='herd-policy'"), key=lambda v: int(v.version))
    # every round's policy, and again for each rerun (other tests change dpo.beta)
    assert {v.tags["herd.stage"] for v in versions} == {s for s in ALL if s == "dpo" or s.startswith("dpo_r")}
    assert versions[0].tags["herd.champion.decision"] == "promoted"  # the first policy has no rival
    for v in versions[1:]:
        tags = v.tags
        rival = tags["herd.champion.previous_task_exact_match"]
        better = not rival or float(tags["herd.champion.task_exact_match"]) > float(rival)
        assert tags["herd.champion.decision"] == ("promoted" if better else "kept")
    promoted = [v for v in versions if v.tags["herd.champion.decision"] == "promoted"]
    assert client.get_model_version_by_alias("herd-policy", "champion").version == promoted[-1].version


def herd_run_background(project, log):
    return subprocess.Popen([sys.executable, "-m", "herd.cli", "run"], cwd=project, env=project_env(project),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def test_a_second_herd_run_is_refused_and_the_first_completes(pipeline_project):
    project = pipeline_project
    set_param(project, "report.rate_noise", 0.06)  # the report alone reruns: the second run comes meanwhile
    first = herd_run_background(project, project / "first.log")
    lock = project / ".herd" / "run.lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and str(first.pid) in lock.read_text()):
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "herd.cli", "run"], cwd=project, env=project_env(project),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"another herd run is running in {project} (pid {first.pid}, started " in second.stderr
    assert first.wait(timeout=600) == 0, (project / "first.log").read_text()[-3000:]
    assert "[herd] report               running" in (project / "first.log").read_text()
    status = subprocess.run(["dvc", "status", "-q"], cwd=project, env=project_env(project))
    assert status.returncode == 0  # everything up to date: the refused run left no trace


def test_a_diverging_stage_stops_and_nothing_downstream_is_promoted(pipeline_project):
    project = pipeline_project
    client = mlflow_client(project)
    versions = len(client.search_model_versions("name='herd-policy'"))
    model = project / "artifacts" / "pretrain" / "model" / "model.safetensors"
    before = model.read_bytes()
    set_param(project, "pretrain.lr", 3.0)
    proc = subprocess.run([sys.executable, "-m", "herd.cli", "run"], cwd=project, env=project_env(project),
                          capture_output=True, text=True, timeout=600)
    set_param(project, "pretrain.lr", 0.003)
    assert proc.returncode == 2
    assert "pretrain: diverged at step" in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: stage pretrain failed (exit ")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert model.read_bytes() == before
    assert len(client.search_model_versions("name='herd-policy'")) == versions


def test_killed_stage_leaves_output_and_lock_untouched_and_resumes_exactly(pipeline_project):
    from safetensors.torch import load_file

    project, env = pipeline_project, project_env(pipeline_project)
    out = project / "artifacts" / "pretrain"
    before = (out / "model" / "model.safetensors").read_bytes()
    lock_before = (project / "dvc.lock").read_text()
    set_param(project, "pretrain.steps", 40)
    ckpt = project / ".herd" / "checkpoints" / "pretrain" / "latest" / "state.json"
    shutil.rmtree(ckpt.parent.parent, ignore_errors=True)  # a failed earlier run's checkpoint would fool the wait
    kill_once_written(project, "pretrain", ckpt)
    assert (project / "dvc.lock").read_text() == lock_before
    # DVC removed the output before the run (none persists) and the kill left no half-written one
    # in its place; DVC's cache still holds the last good one.
    assert not out.exists()
    subprocess.run(["dvc", "checkout", "pretrain"], cwd=project, env=env, check=True, capture_output=True)
    assert (out / "model" / "model.safetensors").read_bytes() == before
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("herd").experiment_id
    killed = client.search_runs([experiment], "tags.`herd.stage` = 'pretrain' and attributes.status = 'RUNNING'")
    assert len(killed) == 1  # SIGKILL gave it no chance to close

    subprocess.run(["dvc", "repro", "--single-item", "pretrain"], cwd=project, env=env, check=True,
                   capture_output=True)
    assert client.get_run(killed[0].info.run_id).info.status == "FAILED"  # closed when the stage started again
    resumed = load_file(str(out / "model" / "model.safetensors"))
    subprocess.run(["dvc", "repro", "--single-item", "--force", "pretrain"], cwd=project, env=env, check=True,
                   capture_output=True)
    uninterrupted = load_file(str(out / "model" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[k] == uninterrupted[k]).all() for k in resumed)


def test_sigterm_stops_herd_run_within_seconds_and_the_next_run_resumes(pipeline_project):
    import psutil
    from mlflow.entities import RunStatus

    project = pipeline_project
    model = project / "artifacts" / "pretrain" / "model" / "model.safetensors"
    before, lock_before = model.read_bytes(), (project / "dvc.lock").read_text()
    set_param(project, "pretrain.steps", 150)
    state = project / ".herd" / "checkpoints" / "pretrain" / "latest" / "state.json"
    shutil.rmtree(state.parent.parent, ignore_errors=True)
    proc = herd_run_background(project, project / "sigterm.log")
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (
            state.exists() and json.loads(state.read_text())["step"] >= 10):
        time.sleep(0.2)
    assert proc.poll() is None, (project / "sigterm.log").read_text()[-3000:]
    started = psutil.Process(proc.pid).children(recursive=True)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    log = (project / "sigterm.log").read_text()
    assert time.time() - sent < 30, log[-3000:]
    assert proc.returncode == 2 and "error: stopped by SIGTERM" in log and "Traceback" not in log
    assert model.read_bytes() == before and (project / "dvc.lock").read_text() == lock_before
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    client = mlflow_client(project)
    runs = client.search_runs([client.get_experiment_by_name("herd").experiment_id],
                              "tags.`herd.stage` = 'pretrain'", order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == RunStatus.to_string(RunStatus.KILLED)
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED" and parent.data.tags["stage.pretrain"] == "stopped"
    stopped_at = json.loads(state.read_text())["step"]
    # Resumed by DVC alone (the last test of the file: its descendants need not run again).
    resumed = subprocess.run(["dvc", "repro", "--single-item", "pretrain"], cwd=project, env=project_env(project),
                             capture_output=True, text=True, check=True)
    assert f"[pretrain] resuming from step {stopped_at}/150" in resumed.stdout + resumed.stderr
