"""The `herd-stage` flow: one stage, run by a Prefect worker in its own clone of the project.

`herd deploy` deploys it once per work pool; `herd run --pools` starts a flow run of it for each
stale stage. In the worker's clone (`HERD_WORKSPACE`, set by `herd worker`) it checks out the
pipeline's commit with the orchestrator's params.yaml and dvc.lock, pulls the outputs of the
stages it reads from the DVC remote, runs the stage with `dvc repro` (which restores it from DVC's
run-cache instead when that run was made before, anywhere), and pushes its outputs and run-cache
entry back. The orchestrating checkout then restores the stage from the remote and records it in
its own dvc.lock: workers never write the orchestrator's files.
"""

import os
import subprocess
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Completed

from herd.errors import HerdError
from herd.orchestration import dvc, session
from herd.runtime import tracking
from herd.runtime.env import state_dir

WORKSPACE_ENV = "HERD_WORKSPACE"
FLOW = "herd-stage"


def workspace() -> Path:
    path = os.environ.get(WORKSPACE_ENV)
    if not path:
        raise HerdError(f"{WORKSPACE_ENV} is not set: start workers with `herd worker POOL` in a clone of the project")
    if not (Path(path) / ".dvc").is_dir():
        raise HerdError(f"{WORKSPACE_ENV}={path} is not a DVC project: clone the project there first")
    return Path(path)


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HerdError(f"git {' '.join(args)} in {root} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def check_out(root: Path, repo: str, commit: str, params: str, lock: str) -> None:
    """The pipeline's code at `commit` with the orchestrator's params and dvc.lock."""
    try:
        git(root, "cat-file", "-e", f"{commit}^{{commit}}")
    except HerdError:
        git(root, "fetch", "-q", repo, commit)
    git(root, "checkout", "-q", "--force", "--detach", commit)
    (root / "params.yaml").write_text(params)
    if lock:
        (root / "dvc.lock").write_text(lock)
    else:
        (root / "dvc.lock").unlink(missing_ok=True)


@flow(name=FLOW, log_prints=True)
def run_stage_on_worker(stage: str, commit: str, repo: str, params: str, lock: str, upstream: list[str],
                        parent_run_id: str | None = None, tracking_uri: str | None = None, force: bool = False):
    """Run `stage` of the pipeline at `commit` here and push its outputs to the DVC remote."""
    logger = get_run_logger()
    root = workspace()
    check_out(root, repo, commit, params, lock)
    env = dict(os.environ)
    if parent_run_id:
        env[tracking.PARENT_RUN_ENV] = parent_run_id
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    log = state_dir(root) / "logs" / f"{stage}.log"
    started = time.time()
    try:
        outcome = _run(root, stage, upstream, force, env, log)  # a SIGTERM here stops the stage at a checkpoint
    finally:  # the stage's own output, for the Prefect UI (the full log stays in the worker's clone)
        if log.is_file():
            logger.info(f"{stage}, last lines of {log}:\n" + "\n".join(_tail(log)))
    logger.info(f"{stage}: {outcome.lower()} in {time.time() - started:.1f}s, outputs pushed to the DVC remote")
    return Completed(name=outcome, message=f"{stage} {outcome.lower()} on {os.uname().nodename}")


def _tail(log: Path, lines: int = 30) -> list[str]:
    """The last lines of a log, progress-bar redraws (\\r) collapsed to their final state."""
    text = log.read_bytes().decode(errors="replace")  # read_text would turn each \r into a line
    return [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")[-lines:]]


def _run(root: Path, stage: str, upstream: list[str], force: bool, env: dict, log: Path) -> str:
    if upstream:
        code = session.STAGES.run(["dvc", "pull", "-q", *(f"dvc.yaml:{up}" for up in upstream)], str(root), env, log)
        if code != 0:
            raise HerdError(f"{stage}: could not pull the outputs of {', '.join(upstream)} from the DVC remote; "
                            f"log: {log} on {os.uname().nodename}")
    cmd = ["dvc", "repro", "--single-item", "--pull", *(["--force"] if force else []), stage]
    code = session.STAGES.run(cmd, str(root), env, log)
    if code != 0:
        raise HerdError(f"stage {stage} failed on this worker (exit {code}); log: {log} on {os.uname().nodename}")
    dvc.push(root, stage)
    return "Ran" if dvc.executed(stage, log) else "Restored"
