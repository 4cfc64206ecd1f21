"""The Herd pipeline as a Prefect flow over DVC's graph of dvc.yaml (which herd/recipe.py generates).

Each DVC stage becomes a Prefect task. A task first asks DVC whether its stage is up to date: if
so it ends in a Completed state named "Skipped" (so the Prefect UI shows it as such). If not:

- locally, it runs `dvc repro --single-item <stage>`, which executes the stage (or restores it from
  DVC's run-cache when the same code, inputs and params ran before) and records it in dvc.lock;
- with `pools`, it starts a flow run of the stage's work-pool deployment (herd/orchestration/pools.py),
  waits for a worker to run it and push its outputs to the DVC remote, then restores the stage
  from the remote here with `dvc repro --pull`, which records it in this checkout's dvc.lock.
  Independent stages run at the same time on different workers.

With a DVC remote, stages pull what earlier runs pushed (restored, not run) and push what they
make. The flow holds a parent MLflow run; each stage's run is nested under it.
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed

from herd.errors import HerdError
from herd.orchestration import dvc, session
from herd.recipe import check_params, stages
from herd.runtime import tracking
from herd.runtime.env import RESTORE_ONLY_ENV, state_dir

DVC_LOCK = threading.Lock()  # this checkout's DVC: one command at a time (DVC's own lock fails, it does not wait)


def say(stage: str, what: str) -> None:
    print(f"[herd] {stage:20s} {what}", flush=True)


def local_repro(stage: str, root: Path, env: dict, force: bool = False, restore_only: bool = False) -> bool:
    """`dvc repro` one stage here, pulling from and pushing to the DVC remote when there is one;
    True when DVC restored it (from the remote or its run-cache) instead of running it. If it fails, the last
    good output is put back."""
    remote = dvc.default_remote(root)
    log = state_dir(root) / "logs" / f"{stage}.log"
    cmd = ["dvc", "repro", "--single-item", *(["--force"] if force else []), *(["--pull"] if remote else []), stage]
    if restore_only:
        env = {**env, RESTORE_ONLY_ENV: stage}
    with dvc.last_good_output(root, stage):
        code = session.STAGES.run(cmd, str(root), env, log)
        if session.STAGES.stopping:
            raise KeyboardInterrupt
        if code != 0:
            raise HerdError(f"stage {stage} failed (exit {code}); its previous output is back in place; "
                            f"full log: {log}")
    if remote:
        dvc.push(root, stage)
    return not dvc.executed(stage, log)


@task(retries=0)
def run_stage(stage: str, root: str, parent_run_id: str | None, force: bool = False, pool: str | None = None,
              upstream: list[str] | None = None, dispatch: dict | None = None, maybe_stale: bool = True):
    logger = get_run_logger()
    path = Path(root)
    with DVC_LOCK:
        reason = "forced (--force)" if force else dvc.why_stale(path, stage) if maybe_stale else None
    if reason is None:
        logger.info(f"{stage}: skipped (up to date)")
        say(stage, "skipped  (up to date)")
        return Completed(name="Skipped", message=f"{stage} is up to date")
    say(stage, f"running  ({reason})" + (f" on the {pool} pool" if pool else ""))
    logger.info(f"{stage}: running ({reason})")
    env = dict(os.environ)
    if parent_run_id:
        env[tracking.PARENT_RUN_ENV] = parent_run_id
    started = time.time()
    if pool:
        from herd.orchestration import pools

        with DVC_LOCK:
            lock = (path / "dvc.lock").read_text() if (path / "dvc.lock").is_file() else ""
        parameters = {**dispatch["parameters"], "stage": stage, "lock": lock, "upstream": upstream or [],
                      "parent_run_id": parent_run_id, "force": force}
        there = pools.dispatch(stage, pool, parameters, dispatch["timeout_s"])
        with DVC_LOCK:
            local_repro(stage, path, env, restore_only=True)
        outcome = "restored" if there == "Restored" else "ran"
        say(stage, f"{'restored' if outcome == 'restored' else 'done    '} on the {pool} pool in "
                   f"{time.time() - started:.1f}s")
    else:
        restored = local_repro(stage, path, env, force)
        outcome = "restored" if restored else "ran"
        say(stage, f"restored in {time.time() - started:.1f}s (not run: DVC had its outputs)" if restored else
            f"done     in {time.time() - started:.1f}s")
    return Completed(name=outcome.capitalize(), message=f"{stage} {outcome}: {reason}")


def commit_of(root: Path) -> str:
    """The commit workers check out: the code must be committed, since they run it from git."""
    status = subprocess.run(["git", "status", "--porcelain", "--", "herd", "tasks", "dvc.yaml", "pyproject.toml"],
                            cwd=root, capture_output=True, text=True)
    if status.returncode != 0:
        raise HerdError(f"--pools runs the committed code on workers, but {root} is not a git checkout")
    if status.stdout.strip():
        raise HerdError("--pools runs the committed code on workers; commit these first:\n" + status.stdout.rstrip())
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def upto(dag: dict[str, list[str]], targets: list[str]) -> dict[str, list[str]]:
    """The part of `dag` the targets need: themselves and their ancestors, in the same order."""
    unknown = [t for t in targets if t not in dag]
    if unknown:
        raise HerdError(f"no stage named {', '.join(unknown)}; the stages are: {', '.join(dag)}")
    needed = set()
    pending = list(targets)
    while pending:
        stage = pending.pop()
        if stage not in needed:
            needed.add(stage)
            pending += dag[stage]
    return {stage: ups for stage, ups in dag.items() if stage in needed}


@flow(name="herd-pipeline", log_prints=False)
def pipeline(root: str = ".", targets: list[str] | None = None, force: bool = False,
             pools: bool = False, experiment: str | None = None) -> dict[str, str]:
    """Run the stages of dvc.yaml in dependency order (all, or up to and including `targets`),
    skipping the up-to-date ones; `force` reruns the targets (or every stage) regardless; `pools`
    runs each stale stage on its work pool (see `herd deploy`); `experiment` names the DVC
    experiment it is (`herd exp run`)."""
    import mlflow

    path = Path(root).resolve()
    params = check_params(path)  # a malformed params.yaml fails here, before any work
    dag = dvc.graph(path)
    if targets:
        dag = upto(dag, targets)
    placement, dispatch = {}, None
    if pools:
        from herd.orchestration.pools import missing_workers, pool_of, worker_lost

        if not dvc.default_remote(path):
            raise HerdError("--pools shares outputs through a DVC remote, and this project has none: "
                            "`dvc remote add -d NAME URL` (a folder or any URL workers can reach)")
        if tracking.tracking_uri(params.runtime.tracking.uri, path).startswith("sqlite"):
            raise HerdError("--pools needs an MLflow server the workers can reach: set runtime.tracking.uri "
                            "(or MLFLOW_TRACKING_URI) to it, e.g. http://127.0.0.1:5000")
        # Every stage of this run, on every worker, runs this commit with these params.
        dispatch = {"timeout_s": params.runtime.pools.timeout_s, "parameters": {
            "commit": commit_of(path), "repo": params.runtime.pools.repo or str(path),
            "params": (path / "params.yaml").read_text(),
            "tracking_uri": tracking.tracking_uri(params.runtime.tracking.uri, path)}}
        placement = {s.name: pool_of(s, params.runtime.pools) for s in stages(path)}
        for key in missing_workers(params.runtime.pools):
            print(f"[herd] no worker is online on the {key} pool yet: its stages wait for one "
                  f"(`herd worker {key}` in a clone of the project)", flush=True)
    # One DVC status for the whole graph: a stage outside this set is up to date whatever runs before it.
    pending = set(dvc.would_run(path, dag))
    experiment_id = tracking.setup(params.runtime.tracking, path)
    tracking.close_abandoned_runs(experiment_id, "pipeline", path)
    tags = {"herd.stage": "pipeline", "herd.workspace": tracking.workspace_tag(path),
            **({"herd.dvc_exp": experiment} if experiment else {})}
    outcome = {}
    with session.stop_on_signals(), \
            mlflow.start_run(experiment_id=experiment_id, run_name=f"pipeline {experiment or ''}".strip(),
                             tags=tags) as run:
        futures = {}
        for stage, upstream in dag.items():  # dvc.yaml's order is a topological order of the recipe
            forced = force and (not targets or stage in targets)
            options = {"retries": params.runtime.pools.retries, "retry_delay_seconds": 5,
                       "retry_condition_fn": worker_lost} if pools else {}
            futures[stage] = run_stage.with_options(name=stage, **options).submit(
                stage, str(path), run.info.run_id, forced, placement.get(stage), upstream, dispatch, stage in pending,
                wait_for=[futures[up] for up in upstream])
            if not pools:  # one stage at a time: two `dvc repro` in one checkout fail on DVC's lock
                _wait(futures, stage, outcome)
        try:
            for stage in futures if pools else ():  # on pools, independent stages run at once
                _wait(futures, stage, outcome)
        except KeyboardInterrupt:
            from herd.orchestration.pools import cancel

            print(f"[herd] stopping: {cancel(run.info.run_id)} stage runs on the pools cancelled", flush=True)
            raise
        mlflow.set_tags({f"stage.{s}": o for s, o in outcome.items()})
        report = path / "artifacts" / "report" / "metrics.json"
        if report.is_file():
            metrics = json.loads(report.read_text())
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return outcome


def _wait(futures: dict, stage: str, outcome: dict) -> None:
    import mlflow

    try:
        futures[stage].wait()
    except KeyboardInterrupt:
        mlflow.set_tags({f"stage.{s}": o for s, o in {**outcome, stage: "stopped"}.items()})
        mlflow.end_run(status="KILLED")
        raise
    state = futures[stage].state
    if state.is_failed() or state.is_crashed():
        outcome[stage] = "failed"
        mlflow.set_tags({f"stage.{s}": o for s, o in outcome.items()})
        futures[stage].result()  # re-raises the stage's error
    outcome[stage] = {"Skipped": "skipped", "Restored": "restored"}.get(state.name, "ran")
