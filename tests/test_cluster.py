"""The pipeline on a cluster, on loopback: a Prefect server, a `cpu` and a `gpu` process work pool
with one worker each (each in its own clone), a DVC remote in a local folder, an MLflow server with
a SQLite backend and checkpoints on shared storage (a folder)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_project, project_env

pytestmark = [pytest.mark.skipif(shutil.which("git") is None, reason="workers clone the project with git"),
              pytest.mark.xdist_group("pipeline-b")]

# CI runs the chain up to pretraining's evaluation on the pools, and experiments on an evaluation
# knob (a few minutes); HERD_CLUSTER_FULL=1 runs every stage, and dpo.beta experiments.
FULL = os.environ.get("HERD_CLUSTER_FULL") == "1"
TARGETS = [] if FULL else ["eval_pretrain"]
KNOB, VALUES = ("dpo.beta", (0.05, 0.5)) if FULL else ("evaluate.math_problems", (2, 3))


def wanted(project: Path) -> list[str]:
    """The stages the test runs, in order."""
    from herd.orchestration import dvc
    from herd.orchestration.flow import upto

    dag = dvc.graph(project)
    return list(upto(dag, TARGETS) if TARGETS else dag)


def changed_by_knob(project: Path) -> list[str]:
    from herd.recipe import stages
    from tests.conftest import descendants

    section = KNOB.split(".")[0]
    readers = [s.name for s in stages(project) if section in s.sections]
    return [s for s in descendants(readers) if s in wanted(project)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not come up: {log.read_text()[-3000:]}")


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process and everything under it, then SIGKILL to what is left (a preempted machine)."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        p.kill()
    proc.wait()


class Cluster:
    def __init__(self, base: Path):
        self.base = base
        self.procs: list[subprocess.Popen] = []
        self.prefect_url = f"http://127.0.0.1:{free_port()}/api"
        self.mlflow_url = f"http://127.0.0.1:{free_port()}"
        self.remote = base / "remote"
        self.shared = base / "shared-checkpoints"
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)

    def env(self, folder: Path, home: str) -> dict:
        env = project_env(folder)
        env.update(PREFECT_API_URL=self.prefect_url, PREFECT_HOME=str(self.base / home),
                   PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO")
        env.pop("PYTHONPATH", None)  # workers run the code of their own clone (cwd), as `python -m` does
        return env

    def spawn(self, cmd, cwd, env, name) -> subprocess.Popen:
        proc = start(cmd, cwd, env, self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def worker(self, pool: str, name: str) -> subprocess.Popen:
        clone = self.base / name
        if not clone.exists():
            subprocess.run(["git", "clone", "-q", str(self.project), str(clone)], check=True)
        return self.spawn([sys.executable, "-m", "herd.cli", "worker", pool, "--name", name], clone,
                          self.env(clone, f"home-{name}"), name)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc, grace=5)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    c = Cluster(base)
    server = c.spawn(["prefect", "server", "start", "--host", "127.0.0.1", "--port",
                      c.prefect_url.split(":")[2].split("/")[0]], base, c.env(base, "home-server"), "prefect")
    mlflow = c.spawn(["mlflow", "server", "--host", "127.0.0.1", "--port", c.mlflow_url.rsplit(":", 1)[1],
                      "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                      "--artifacts-destination", str(base / "mlartifacts")], base, c.env(base, "home-server"), "mlflow")
    project = make_project(base / "project", {
        "runtime": {"tracking": {"uri": c.mlflow_url}, "train": {"checkpoints": str(c.shared)}}}, git=True)
    env = c.env(project, "home-orchestrator")
    subprocess.run(["dvc", "remote", "add", "-d", "store", str(c.remote)], cwd=project, env=env, check=True)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "the tiny project")
    c.project, c.project_env = project, env
    try:
        wait_for(c.prefect_url + "/health", server, c.logs / "prefect.log")
        wait_for(c.mlflow_url + "/health", mlflow, c.logs / "mlflow.log")
        deploy = subprocess.run([sys.executable, "-m", "herd.cli", "deploy"], cwd=project, env=env,
                                capture_output=True, text=True)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        c.workers = {"cpu": c.worker("cpu", "worker-cpu"), "gpu": c.worker("gpu", "worker-gpu")}
        yield c
    finally:
        c.close()


def flow_runs(cluster) -> list[dict]:
    """Every flow run, as the Prefect API lists them."""
    import urllib.request

    request = urllib.request.Request(f"{cluster.prefect_url}/flow_runs/filter", data=b'{"limit": 200}',
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def test_the_pipeline_runs_on_the_pools_and_a_killed_worker_is_replaced(cluster, pipeline_project):
    """Must-hold 1 and 3: every stage runs on its pool; the gpu worker is killed (SIGTERM, then
    SIGKILL) during pretraining, another takes the retried stage and resumes from the shared
    checkpoint, ending with the weights of the uninterrupted local run."""
    from safetensors.torch import load_file

    project = cluster.project
    log = cluster.logs / "run.log"
    run = cluster.spawn([sys.executable, "-m", "herd.cli", "run", "--pools", *TARGETS], project, cluster.project_env,
                        "run")
    checkpoint = cluster.shared / "pretrain" / "latest" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None and not checkpoint.exists():
        time.sleep(0.05)
    assert checkpoint.exists(), log.read_text()[-3000:]
    stop(cluster.workers["gpu"])
    cluster.workers["gpu"] = cluster.worker("gpu", "worker-gpu-2")
    assert run.wait(timeout=1500) == 0, log.read_text()[-5000:]
    out = log.read_text()
    assert "0 skipped" in out

    runs = {r["name"]: r for r in flow_runs(cluster) if r["deployment_id"] and r["state_type"] == "COMPLETED"}
    from herd.recipe import stages

    ran = wanted(project)
    for s in stages(project):
        if s.name in ran:
            pool = "gpu" if s.spec.trains else "cpu"
            assert runs[s.name]["work_pool_name"] == pool, (s.name, runs[s.name]["work_pool_name"])
    pretrain = [r for r in flow_runs(cluster) if r["name"] == "pretrain"]
    assert sorted(r["state_type"] for r in pretrain) == ["COMPLETED", "CRASHED"], pretrain

    resumed = load_file(str(project / "artifacts" / "pretrain" / "model" / "model.safetensors"))
    uninterrupted = load_file(str(pipeline_project.parent / "after_first_run" / "artifacts" / "pretrain" / "model"
                                  / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[k] == uninterrupted[k]).all() for k in resumed)
    assert "resuming from step" in (cluster.base / "worker-gpu-2" / ".herd" / "logs" / "pretrain.log").read_text()

    import mlflow

    client = mlflow.MlflowClient(cluster.mlflow_url, cluster.mlflow_url)
    experiment = client.get_experiment_by_name("herd").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`herd.stage` = 'pipeline'")
    nested = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags["herd.stage"] for r in nested} == set(ran)
    if FULL:
        for name in ("herd-policy", "herd-reward"):
            assert client.get_model_version_by_alias(name, "champion")
    import yaml

    assert list(yaml.safe_load((project / "dvc.lock").read_text())["stages"]) == ran  # the orchestrator's lock


def test_a_second_clone_on_the_same_remote_restores_every_stage_and_runs_none(cluster):
    """Must-hold 2: a fresh clone pointed at the same DVC remote and MLflow server reproduces the
    pipeline from DVC's run-cache: every stage restored, none executed."""
    clone = cluster.base / "second-clone"
    subprocess.run(["git", "clone", "-q", str(cluster.project), str(clone)], check=True)
    env = cluster.env(clone, "home-second")
    proc = subprocess.run([sys.executable, "-m", "herd.cli", "run", *TARGETS], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = wanted(clone)
    assert f"0 ran, {len(ran)} restored, 0 skipped" in proc.stdout, proc.stdout[-3000:]
    for stage in ran:
        assert (clone / "artifacts" / stage / "manifest.json").read_bytes() == \
            (cluster.project / "artifacts" / stage / "manifest.json").read_bytes()
    status = subprocess.run(["dvc", "status", "-q", *ran], cwd=clone, env=env)
    assert status.returncode == 0


def test_two_experiments_run_at_once_on_the_pools_sharing_the_upstream_stages(cluster):
    """Must-hold 4: two variants of one knob started together both complete on the pools; the
    stages it leaves alone run in neither; both are DVC experiments and MLflow pipeline runs."""
    project = cluster.project
    runs = {value: cluster.spawn([sys.executable, "-m", "herd.cli", "exp", "run", "--pools", "-S", f"{KNOB}={value}",
                                  "-n", f"v{value}", *TARGETS], project, cluster.project_env, f"exp-{value}")
            for value in VALUES}
    for value, proc in runs.items():
        assert proc.wait(timeout=900) == 0, (cluster.logs / f"exp-{value}.log").read_text()[-4000:]
    changed = changed_by_knob(project)
    for value in runs:
        lines = (cluster.logs / f"exp-{value}.log").read_text().splitlines()
        ran = {line.split()[1] for line in lines if line.startswith("[herd] ") and " running " in line}
        assert ran == set(changed), sorted(ran ^ set(changed))
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=cluster.project_env,
                                      capture_output=True, text=True, check=True).stdout)
    names = {exp.get("name") for rev in shown for exp in rev.get("experiments") or []}
    assert {f"v{value}" for value in VALUES} <= names, names

    import mlflow

    client = mlflow.MlflowClient(cluster.mlflow_url, cluster.mlflow_url)
    experiment = client.get_experiment_by_name("herd").experiment_id
    section, key = KNOB.split(".", 1)
    for value in runs:
        (parent,) = client.search_runs([experiment], f"tags.`herd.dvc_exp` = 'v{value}'")
        assert parent.info.status == "FINISHED"
        nested = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert {r.data.tags["herd.stage"] for r in nested} == set(changed)
        assert all(float(r.data.params[KNOB]) == value for r in nested if KNOB in r.data.params)


def test_a_stage_is_dispatched_again_when_its_worker_is_lost_and_not_when_it_fails():
    from prefect import flow, task

    from herd.errors import HerdError
    from herd.orchestration.pools import WorkerLost, worker_lost

    attempts = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=worker_lost)
    def stage(outcome: str):
        attempts.append(outcome)
        raise WorkerLost("its worker vanished") if outcome == "lost" else HerdError("diverged at step 7")

    @flow
    def pipeline(outcome: str):
        return stage(outcome, return_state=True)

    assert pipeline("lost", return_state=True).is_failed() and pipeline("failed", return_state=True).is_failed()
    assert attempts == ["lost", "lost", "lost", "failed"]
