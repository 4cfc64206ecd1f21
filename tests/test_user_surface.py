"""What users touch after a run, through the commands they type: `dvc exp show` / `dvc plots diff`
against main, `herd run STAGE --force`, `herd lineage`, `herd serve`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import project_env, stage_lines

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline-a")]


def herd(project, *args, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "herd.cli", *args], cwd=project, env=project_env(project),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def experiment(pipeline_project):
    """The tiny project as its first run left it, in git with its results committed on main, then
    `dvc exp run -S dpo.beta=0.2 eval_dpo`, as a user compares a variant with main (up to dpo's
    evaluation: round 2 after it is checked by tests/test_recipe.py in seconds)."""
    project = pipeline_project.parent / "after_first_run"  # every stage up to date
    env = project_env(project)
    git = [["git", "init", "-q", "-b", "main"], ["dvc", "config", "core.no_scm", "false"], ["git", "add", "-A"],
           ["git", "commit", "-qm", "results"]]
    (project / ".gitignore").write_text("/artifacts/\n/.herd/\n__pycache__/\n*.log\n")
    for cmd in git:
        subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)
    proc = subprocess.run(["dvc", "exp", "run", "-S", "dpo.beta=0.2", "-n", "beta02", "eval_dpo"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return project


def dvc(project, *args) -> str:
    proc = subprocess.run(["dvc", *args], cwd=project, env=project_env(project), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_dvc_exp_show_compares_headline_metrics_of_main_and_the_experiment(experiment):
    rows = json.loads(dvc(experiment, "exp", "show", "--json"))
    main = rows[0] if rows[0]["name"] == "main" else rows[1]
    exp = next(e for e in main["experiments"] if e["name"] == "beta02")["revs"][0]

    def metrics(row):
        return {k: v for f in row["data"]["metrics"].values() for k, v in f["data"].items()}

    base, variant = metrics(main), metrics(exp)
    assert base.keys() == variant.keys() and "eval_dpo" in base  # main has them: committed
    assert variant["eval_dpo"] != base["eval_dpo"]  # the experiment's own numbers
    assert variant["eval_pretrain"] == base["eval_pretrain"]  # not rerun
    assert variant["eval_extend"] == base["eval_extend"]
    columns = sum(len(stage) for stage in base.values())
    assert columns + 2 < 32  # Experiment, Created and the headline metrics, before params and deps

    table = dvc(experiment, "exp", "show", "--no-pager", "--md")
    header = table.splitlines()[0]
    assert header.split("|")[1].strip() == "Experiment" and "eval_dpo.task_exact_match" in header
    assert "beta02" in table and "main" in table


def test_dvc_plots_diff_renders_the_loss_curves_of_main_and_the_experiment(experiment):
    out = json.loads(dvc(experiment, "plots", "diff", "main", "beta02", "--json", "--split"))
    assert not out.get("errors"), out.get("errors")
    data = out["data"]
    dpo = data["dpo: training loss"][0]
    points = dpo["anchor_definitions"]["<DVC_METRIC_DATA>"]
    assert dpo["revisions"] == ["main", "beta02"] and {p["rev"] for p in points} == {"main", "beta02"}
    by_rev = {rev: [float(p["loss"]) for p in points if p["rev"] == rev] for rev in ("main", "beta02")}
    assert by_rev["main"] != by_rev["beta02"]
    for stage in ("pretrain", "extend", "anneal", "reward", "sft", "dpo"):
        assert f"{stage}: training loss" in data and f"{stage}: learning rate" in data
    assert "filter: documents left after each step" in data
    html = experiment / "dvc_plots" / "index.html"
    dvc(experiment, "plots", "diff", "main", "beta02", "-o", "dvc_plots")
    assert html.is_file() and "dpo: training loss" in html.read_text()


def test_run_names_stages_and_force_reruns_only_them(experiment):
    # the experiment's workspace is up to date: `dvc exp run` left it so
    assert stage_lines(herd(experiment, "run", "tokenizer")) == \
        {"corpus": "skipped", "filter": "skipped", "tokenizer": "skipped"}
    lines = stage_lines(herd(experiment, "run", "eval_dpo", "--force"))
    assert lines.pop("eval_dpo") == "running" and set(lines.values()) == {"skipped"} and len(lines) > 10
    unknown = subprocess.run([sys.executable, "-m", "herd.cli", "run", "nosuch"], cwd=experiment,
                             env=project_env(experiment), capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "no stage named nosuch" in unknown.stderr


def test_lineage_prints_every_ancestor_of_the_champion_down_to_the_sources(pipeline_project):
    out = herd(pipeline_project, "lineage", "models:/herd-policy@champion").stdout
    stages = [line.split()[0] for line in out.splitlines() if "(MLflow run " in line]
    assert stages[0] == "dpo" and stages[-1] == "corpus"
    assert set(stages) == {"dpo", "dpo_pairs", "sft", "rejection_sample", "reward", "anneal", "extend", "pretrain",
                           "tokenizer", "filter", "corpus"}
    assert "sources  builtin" in out and "dpo.beta=" in out and "inputs   sft " in out
    missing = subprocess.run([sys.executable, "-m", "herd.cli", "lineage", "models:/herd-policy@nosuch"],
                             cwd=pipeline_project, env=project_env(pipeline_project), capture_output=True, text=True)
    assert missing.returncode == 2 and "not in the model registry" in missing.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_on_loopback(pipeline_project):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "herd.cli", "serve", "models:/herd-reward@champion",
                               "--port", str(port)], cwd=pipeline_project, env=project_env(pipeline_project),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                time.sleep(0.5)
        body = {"dataframe_split": {"columns": ["prompt", "response"],
                                    "data": [["What is 2+3?", "2+3=5. The answer is 5."]]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert len(answer["predictions"]) == 1 and isinstance(answer["predictions"][0], float)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_dvc_exp_runs_are_grouped_in_mlflow_under_the_experiment(experiment):
    from tests.test_pipeline import mlflow_client

    client = mlflow_client(experiment)
    runs = client.search_runs([client.get_experiment_by_name("herd").experiment_id], "tags.`herd.dvc_exp` = 'beta02'")
    stages = {r.data.tags["herd.stage"]: r for r in runs if "herd.group" not in r.data.tags}
    assert set(stages) == {"dpo", "eval_dpo"}  # what the experiment reran
    parent = client.get_run(stages["dpo"].data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "dvc exp run beta02"
    assert {r.data.tags["mlflow.parentRunId"] for r in stages.values()} == {parent.info.run_id}


def test_logged_models_have_a_signature_and_installable_requirements(pipeline_project):
    import mlflow

    from tests.test_pipeline import mlflow_client

    mlflow_client(pipeline_project)
    policy = mlflow.models.get_model_info("models:/herd-policy@champion")
    assert {p.name for p in policy.signature.params.params} == {"max_new_tokens", "temperature", "top_k", "seed"}
    assert policy.signature.inputs.input_names() == ["prompt"]
    requirements = open(mlflow.pyfunc.get_model_dependencies("models:/herd-policy@champion")).read().split()
    assert requirements and all("==" in r for r in requirements) and not any(r.startswith("herd") for r in requirements)
    reward = mlflow.models.get_model_info("models:/herd-reward@champion")
    assert reward.signature.inputs.input_names() == ["prompt", "response"]
    runs = mlflow_client(pipeline_project).search_runs(
        [mlflow.get_experiment_by_name("herd").experiment_id], "tags.`herd.stage` = 'pretrain'", max_results=1)
    logged = mlflow.search_logged_models([runs[0].info.experiment_id], f"source_run_id = '{runs[0].info.run_id}'",
                                         output_format="list")
    assert logged and logged[0].tags.get("herd.stage") == "pretrain"  # every training stage logs its model


def test_transformers_alone_generates_what_herd_samples_from_the_exported_policy(pipeline_project):
    import transformers

    from herd.data.tokens import load_tokenizer
    from herd.model.llama import load_checkpoint
    from herd.post.chat import ChatFormat
    from herd.post.generate import greedy

    folder = pipeline_project / "artifacts" / "dpo" / "model"
    fmt, model = ChatFormat(load_tokenizer(folder)), load_checkpoint(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    for question in ("What is 12 + 30?", "Ava has 3 apples and buys 4 more. How many apples does Ava have?"):
        inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         return_dict=True, return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == fmt.prompt(question)
        herd_ids = greedy(model, [fmt.prompt(question)], 48, fmt.stops, precision="fp32")[0]
        hf_ids = hf.generate(**inputs, max_new_tokens=48)[0, inputs["input_ids"].shape[1]:].tolist()
        assert hf_ids == herd_ids  # a stop, where the tiny policy makes one, included (tests/test_export.py forces one)
