"""The Herd pipeline as a Prefect flow, built from dvc.yaml (the one declaration of the DAG).

Each DVC stage becomes a Prefect task. A task first asks DVC whether its stage is up to date: if
so it ends in a Completed state named "Skipped" (so the Prefect UI shows it as such); if not it
runs `dvc repro --single-item <stage>`, which executes the stage and records it in dvc.lock. The
flow holds a parent MLflow run; each stage's run is nested under it.

    herd run        # run the pipeline (only what changed)
    herd status     # say what would run and why, without running anything
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.states import Completed

import herd  # noqa: F401  (sets the offline environment before prefect and mlflow are imported)
from herd import tracking
from herd.config import load_params
from herd.env import project_root
from herd.errors import HerdError


def load_dag(root: Path) -> dict[str, list[str]]:
    """{stage: [upstream stages]} in dvc.yaml order, from which stage's outs each one depends on."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    producer = {}
    for name, spec in stages.items():
        for out in spec.get("outs", []):
            producer[next(iter(out)) if isinstance(out, dict) else out] = name
    return {name: [producer[d] for d in spec.get("deps", []) if d in producer] for name, spec in stages.items()}


def topological(dag: dict[str, list[str]]) -> list[str]:
    order, seen = [], set()

    def visit(stage: str, path: tuple = ()) -> None:
        if stage in path:
            raise HerdError(f"dvc.yaml has a cycle: {' -> '.join(path + (stage,))}")
        if stage not in seen:
            for up in dag[stage]:
                visit(up, path + (stage,))
            seen.add(stage)
            order.append(stage)

    for stage in dag:
        visit(stage)
    return order


def why_stale(root: Path, stage: str) -> str | None:
    """None when DVC considers the stage up to date, else a short reason."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status(targets=[stage])
    if not status:
        return None
    lock = root / "dvc.lock"
    if not lock.is_file() or stage not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}):
        return "never run here"
    reasons = []
    for entry in next(iter(status.values())):
        if isinstance(entry, str):
            reasons.append(entry)
            continue
        for kind, changes in entry.items():
            names = ", ".join(f"{k} {v}" for k, v in changes.items()) if isinstance(changes, dict) else str(changes)
            reasons.append(f"{kind}: {names}")
    return "; ".join(reasons)


@task(retries=0)
def run_stage(stage: str, root: str, parent_run_id: str | None):
    logger = get_run_logger()
    reason = why_stale(Path(root), stage)
    if reason is None:
        logger.info(f"{stage}: skipped (up to date)")
        print(f"[herd] {stage:17s} skipped  (up to date)", flush=True)
        return Completed(name="Skipped", message=f"{stage} is up to date")
    print(f"[herd] {stage:17s} running  ({reason})", flush=True)
    logger.info(f"{stage}: running ({reason})")
    env = dict(os.environ)
    if parent_run_id:
        env[tracking.PARENT_RUN_ENV] = parent_run_id
    started = time.time()
    proc = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=root, env=env)
    if proc.returncode != 0:
        raise HerdError(f"stage {stage} failed (exit {proc.returncode}); its previous output is untouched")
    print(f"[herd] {stage:17s} done     in {time.time() - started:.1f}s", flush=True)
    return Completed(name="Ran", message=f"{stage} ran: {reason}")


@flow(name="herd-pipeline", log_prints=False)
def pipeline(root: str = ".") -> dict[str, str]:
    """Run every stage of dvc.yaml in dependency order, skipping the up-to-date ones."""
    import mlflow

    path = Path(root).resolve()
    params = load_params(path / "params.yaml")  # a malformed params.yaml fails here, before any work
    dag = load_dag(path)
    experiment_id = tracking.setup(params.tracking, path)
    outcome = {}
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline", tags={"herd.stage": "pipeline"}) as run:
        futures = {}
        for stage in topological(dag):
            futures[stage] = run_stage.with_options(name=stage).submit(
                stage, str(path), run.info.run_id, wait_for=[futures[up] for up in dag[stage]]
            )
            futures[stage].wait()  # one stage at a time: two `dvc repro` in one repo fail on DVC's lock
            state = futures[stage].state
            if state.is_failed():
                outcome[stage] = "failed"
                mlflow.set_tags({f"stage.{s}": o for s, o in outcome.items()})
                futures[stage].result()  # re-raises the stage's error
            outcome[stage] = "skipped" if state.name == "Skipped" else "ran"
        mlflow.set_tags({f"stage.{s}": o for s, o in outcome.items()})
        report = path / "artifacts" / "evaluate" / "metrics.json"
        if report.is_file():
            metrics = json.loads(report.read_text())
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return outcome


def status(root: Path) -> dict[str, str | None]:
    """What `herd run` would do, stage by stage (upstream reruns propagate, as in `dvc repro`)."""
    import logging

    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # its per-stage "didn't change" lines
    with Repo(str(root)) as repo:
        would_run = {s.addressing for s in repo.reproduce(dry=True, force=False)}
    return {stage: ("would run" if stage in would_run else None) for stage in topological(load_dag(root))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the pipeline through Prefect (only the stages that changed)")
    sub.add_parser("status", help="list the stages that would run, without running them")
    args = parser.parse_args(argv)
    root = project_root()
    try:
        if args.command == "run":
            started = time.time()
            outcome = pipeline(str(root))
            ran = [s for s, o in outcome.items() if o == "ran"]
            print(f"[herd] pipeline finished in {time.time() - started:.0f}s: "
                  f"{len(ran)} ran, {len(outcome) - len(ran)} skipped")
        else:
            for stage, state in status(root).items():
                print(f"{stage:17s} {state or 'up to date'}")
    except HerdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
