"""The `herd` command.

    herd run                run the pipeline through Prefect (only stages whose code, inputs or params changed)
    herd status             say which stages would run and why, without running anything
    herd dag [--write]      the recipe's stages; --write regenerates dvc.yaml from herd/recipe.py
    herd check              validate params.yaml against every section's schema
    herd filter ...         the corpus filter on any file, outside the pipeline
"""

import argparse
import os
import sys
import time

import herd  # noqa: F401  (sets the offline environment before prefect and mlflow are imported)
from herd.errors import HerdError
from herd.orchestration import dvc
from herd.orchestration.session import STAGES, exclusive_run, stop_on_signals
from herd.recipe import check_params, stages
from herd.runtime.env import VERBOSE_ENV, project_root


def sync_dvc_yaml(root) -> None:
    """dvc.yaml follows the recipe (e.g. after a change of post.rounds)."""
    if dvc.write(root, stages(root)):
        print("[herd] dvc.yaml regenerated from herd/recipe.py and params.yaml (post.rounds)", flush=True)


def cmd_run(args) -> None:
    root = project_root()
    check_params(root)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:  # Prefect's own log lines (and its tracebacks of a failed stage) only with --verbose
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    from herd.orchestration.flow import pipeline

    with exclusive_run(root, wait=args.wait):
        sync_dvc_yaml(root)
        started = time.time()
        try:
            with stop_on_signals():  # again inside the flow, where Prefect installs its own handler
                outcome = pipeline(str(root))
        except KeyboardInterrupt:
            raise HerdError(f"stopped by {STAGES.stopping or 'an interrupt'}: the running stage saved what it "
                            "could resume from; finished stages and dvc.lock are as they were") from None
    ran = [s for s, o in outcome.items() if o == "ran"]
    print(f"[herd] pipeline finished in {time.time() - started:.0f}s: {len(ran)} ran, "
          f"{len(outcome) - len(ran)} skipped")


def cmd_status(args) -> None:
    root = project_root()
    check_params(root)
    if not dvc.is_current(root, stages(root)):
        print("dvc.yaml differs from the recipe: `herd run` (or `herd dag --write`) regenerates it")
        return
    dag, changed = dvc.graph(root), dvc.stale(root)  # one look at DVC for every stage
    pending = dvc.would_run(root, dag, changed)
    for stage in dag:
        if stage in pending:
            print(f"{stage:20s} would run ({changed.get(stage, 'an upstream stage will run')})")
        else:
            print(f"{stage:20s} up to date")


def cmd_dag(args) -> None:
    root = project_root()
    steps = stages(root)
    if args.write:
        changed = dvc.write(root, steps)
        print(f"dvc.yaml {'regenerated' if changed else 'already matches the recipe'}")
        return
    if args.check:
        if not dvc.is_current(root, steps):
            raise HerdError("dvc.yaml differs from herd/recipe.py: run `herd dag --write`")
        print("dvc.yaml matches the recipe")
        return
    for s in steps:
        inputs = ", ".join(f"{role}={up}" for role, up in s.inputs) or "-"
        print(f"{s.name:20s} {s.module:24s} reads {inputs}; params {', '.join(s.sections) or '-'}")


def cmd_check(args) -> None:
    check_params(project_root())
    print("params.yaml is valid")


def cmd_filter(args) -> None:
    from herd.data import filter_cli

    filter_cli.run(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline through Prefect (only the stages that changed)")
    run.add_argument("--wait", action="store_true", help="queue behind a herd run already running in this checkout")
    run.add_argument("--verbose", action="store_true", help="show Prefect's log and full tracebacks")
    run.set_defaults(fn=cmd_run)
    sub.add_parser("status", help="list the stages that would run and why, without running them").set_defaults(
        fn=cmd_status)
    dag = sub.add_parser("dag", help="list the recipe's stages; --write regenerates dvc.yaml")
    group = dag.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="regenerate dvc.yaml from herd/recipe.py")
    group.add_argument("--check", action="store_true", help="fail when dvc.yaml differs from the recipe")
    dag.set_defaults(fn=cmd_dag)
    sub.add_parser("check", help="validate params.yaml").set_defaults(fn=cmd_check)
    from herd.data.filter_cli import add_arguments

    filt = sub.add_parser("filter", help="run the corpus filter on any jsonl(.gz)/parquet file or folder: every "
                          "kept document and every reject with its reason (no mixing)")
    add_arguments(filt)
    filt.set_defaults(fn=cmd_filter)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except HerdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
