"""The Herd pipeline as a Prefect flow over DVC's graph of dvc.yaml (which herd/recipe.py generates).

Each DVC stage becomes a Prefect task. A task first asks DVC whether its stage is up to date: if
so it ends in a Completed state named "Skipped" (so the Prefect UI shows it as such); if not it
runs `dvc repro --single-item <stage>`, which executes the stage and records it in dvc.lock. The
flow holds a parent MLflow run; each stage's run is nested under it.
"""

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed

from herd.errors import HerdError
from herd.orchestration import dvc, session
from herd.recipe import check_params
from herd.runtime import tracking
from herd.runtime.env import state_dir


@task(retries=0)
def run_stage(stage: str, root: str, parent_run_id: str | None, force: bool = False):
    logger = get_run_logger()
    reason = "forced (--force)" if force else dvc.why_stale(Path(root), stage)
    if reason is None:
        logger.info(f"{stage}: skipped (up to date)")
        print(f"[herd] {stage:20s} skipped  (up to date)", flush=True)
        return Completed(name="Skipped", message=f"{stage} is up to date")
    print(f"[herd] {stage:20s} running  ({reason})", flush=True)
    logger.info(f"{stage}: running ({reason})")
    env = dict(os.environ)
    if parent_run_id:
        env[tracking.PARENT_RUN_ENV] = parent_run_id
    started = time.time()
    log = state_dir(Path(root)) / "logs" / f"{stage}.log"
    code = session.STAGES.run(["dvc", "repro", "--single-item", *(["--force"] if force else []), stage], root, env, log)
    if session.STAGES.stopping:
        raise KeyboardInterrupt
    if code != 0:
        raise HerdError(f"stage {stage} failed (exit {code}); its previous output is untouched; full log: {log}")
    print(f"[herd] {stage:20s} done     in {time.time() - started:.1f}s", flush=True)
    return Completed(name="Ran", message=f"{stage} ran: {reason}")


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
def pipeline(root: str = ".", targets: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """Run the stages of dvc.yaml in dependency order (all, or up to and including `targets`),
    skipping the up-to-date ones; `force` reruns the targets (or every stage) regardless."""
    import mlflow

    path = Path(root).resolve()
    params = check_params(path)  # a malformed params.yaml fails here, before any work
    dag = dvc.graph(path)
    if targets:
        dag = upto(dag, targets)
    experiment_id = tracking.setup(params.runtime.tracking, path)
    tracking.close_abandoned_runs(experiment_id, "pipeline")
    outcome = {}
    with session.stop_on_signals(), \
            mlflow.start_run(experiment_id=experiment_id, run_name="pipeline", tags={"herd.stage": "pipeline"}) as run:
        futures = {}
        for stage, upstream in dag.items():  # dvc.yaml's order is a topological order of the recipe
            forced = force and (not targets or stage in targets)
            futures[stage] = run_stage.with_options(name=stage).submit(
                stage, str(path), run.info.run_id, forced, wait_for=[futures[up] for up in upstream]
            )
            try:
                futures[stage].wait()  # one stage at a time: two `dvc repro` in one repo fail on DVC's lock
            except KeyboardInterrupt:
                mlflow.set_tags({f"stage.{s}": o for s, o in {**outcome, stage: "stopped"}.items()})
                mlflow.end_run(status="KILLED")
                raise
            state = futures[stage].state
            if state.is_failed():
                outcome[stage] = "failed"
                mlflow.set_tags({f"stage.{s}": o for s, o in outcome.items()})
                futures[stage].result()  # re-raises the stage's error
            outcome[stage] = "skipped" if state.name == "Skipped" else "ran"
        mlflow.set_tags({f"stage.{s}": o for s, o in outcome.items()})
        report = path / "artifacts" / "report" / "metrics.json"
        if report.is_file():
            metrics = json.loads(report.read_text())
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return outcome
