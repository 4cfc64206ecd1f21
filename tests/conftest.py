"""Shared fixtures: a tiny copy of the project (same code and recipe, smaller numbers) in a
temporary folder, so pipeline tests never touch the developer's artifacts."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

# The suite runs on two xdist workers (pyproject.toml): one thread per process, or two processes'
# OpenMP threads spin against each other on two cores. Stage subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = deep_merge(base[key], value) if nested else value
    return out


def make_project(folder: Path, overrides: dict | None = None, git: bool = False) -> Path:
    """A DVC project with the repository's code and dvc.yaml and the tiny params (in a git
    repository of its own with `git`, as `dvc exp` needs)."""
    for name in ("herd", "tasks"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(deep_merge(params, yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())),
                        overrides or {})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(folder)
    if git:
        subprocess.run(["git", "init", "-q"], cwd=folder, env=env, check=True)
        (folder / ".gitignore").write_text("/artifacts/\n/.herd/\n__pycache__/\n")
    subprocess.run(["dvc", "init", "-q", *([] if git else ["--no-scm"])], cwd=folder, env=env, check=True)
    for option in ("core.analytics", "core.check_update"):  # offline, as the repository's .dvc/config
        subprocess.run(["dvc", "config", option, "false"], cwd=folder, env=env, check=True)
    return folder


def project_env(folder: Path) -> dict:
    """The environment a stage gets in `folder`: its own MLflow store and Prefect home."""
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "HERD_PARENT_RUN_ID"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(folder)
    env.setdefault("GIT_AUTHOR_NAME", "herd-tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@herd.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "herd-tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@herd.invalid")
    return env


def set_param(project: Path, dotted: str, value) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def can_cut_network() -> bool:
    """Whether this machine lets a process run in a network namespace of its own (root here)."""
    return shutil.which("unshare") is not None and shutil.which("ip") is not None and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory) -> Path:
    """The tiny project after one full run of the Prefect flow (shared by the pipeline tests),
    with no network but loopback when the machine allows it."""
    project = make_project(tmp_path_factory.mktemp("herd"))
    offline = can_cut_network()
    proc = run_flow(project, offline=offline)
    (project / ".herd" / "first_run_offline").write_text(str(offline))
    (project / ".herd" / "first_run.log").write_text(proc.stdout)
    # As the first run left it, for tests that need every stage up to date whatever others changed.
    shutil.copytree(project, project.parent / "after_first_run", ignore=shutil.ignore_patterns("__pycache__"))
    return project


def run_flow(project: Path, *targets: str, offline: bool = False) -> subprocess.CompletedProcess:
    """`herd run [targets]` in the project, as a user would; returns the finished process. Offline,
    it runs in a network namespace with only loopback up: any attempt to reach the network fails."""
    cmd = ["python", "-m", "herd.cli", "run", *targets]
    if offline:
        cmd = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec python -m herd.cli run {' '.join(targets)}"]
    proc = subprocess.run(cmd, cwd=project, env=project_env(project), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def kill_once_written(project: Path, stage: str, path: Path, timeout: float = 180) -> None:
    """`dvc repro` the stage and SIGKILL its whole process group as soon as `path` (a checkpoint)
    exists: a worker killed mid-stage, with no chance to clean up."""
    proc = subprocess.Popen(["dvc", "repro", "--single-item", stage], cwd=project, env=project_env(project),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.exists(), f"{stage} wrote no checkpoint before it was killed"


def stage_lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """{stage: 'running' | 'skipped'} from the flow's one line per stage."""
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("[herd] ") and (" running " in line or " skipped " in line):
            parts = line.split()
            out[parts[1]] = parts[2]
    return out


def descendants(names: list[str]) -> list[str]:
    """`names` and every stage downstream of them, in the recipe order of this repository's params."""
    from herd.recipe import stages

    out: list[str] = []
    for s in stages(REPO):
        if s.name in names or any(up in out for up in s.upstream):
            out.append(s.name)
    return out
