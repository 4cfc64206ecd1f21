"""The `herd` command.

    herd run [STAGE ...]    run the pipeline through Prefect (only stages whose code, inputs or params
                            changed), all of it or up to and including STAGE; --force reruns STAGE;
                            --profile NAME first writes profiles/NAME.yaml into params.yaml
    herd status             say which stages would run and why, without running anything
    herd report             bring the evaluation report up to date and print its verdicts
    herd lineage TARGET     the chain behind a registered model or an output, back to the raw sources
    herd serve [MODEL]      serve a registered model on 127.0.0.1 (mlflow models serve)
    herd dag [--write]      the recipe's stages; --write regenerates dvc.yaml from herd/recipe.py
    herd check              validate params.yaml against every section's schema
    herd exp run -S K=V     a param variant in a workspace of its own, saved as a DVC experiment
    herd deploy             create the work pools and the per-stage deployments on the Prefect server
    herd worker POOL        a Prefect worker for the cpu or gpu pool, with this clone as its workspace
    herd filter ...         the corpus filter on any file, outside the pipeline
"""

import argparse
import os
import subprocess
import sys
import time

import herd  # noqa: F401  (sets the offline environment before prefect and mlflow are imported)
from herd.errors import HerdError
from herd.orchestration import dvc
from herd.orchestration.session import STAGES, exclusive_run, stop_on_signals
from herd.profiles import apply_profile
from herd.recipe import check_params, stages
from herd.runtime.env import VERBOSE_ENV, project_root


def sync_dvc_yaml(root) -> None:
    """dvc.yaml follows the recipe (e.g. after a change of post.rounds)."""
    if dvc.write(root, stages(root)):
        print("[herd] dvc.yaml regenerated from herd/recipe.py and params.yaml (post.rounds)", flush=True)


def cmd_run(args) -> None:
    if args.profile:
        changes = apply_profile(project_root(), args.profile, check_params)
        print(f"[herd] params.yaml: profile {args.profile} applied ({len(changes)} values changed; "
              f"`git checkout params.yaml` goes back)", flush=True)
        for change in changes:
            print(f"[herd]   {change}", flush=True)
    run_pipeline(args.stages, args.force, args.wait, args.verbose, args.pools)


def set_verbosity(verbose: bool) -> None:
    """Prefect's own log lines (and its tracebacks of a failed stage) only with --verbose; before
    prefect is first imported, which reads its settings once."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")


def run_pipeline(targets: list[str], force: bool, wait: bool, verbose: bool, pools: bool = False,
                 root=None, experiment: str | None = None) -> None:
    root = root or project_root()
    check_params(root)
    set_verbosity(verbose)
    from herd.orchestration.flow import pipeline, upto

    upto({s.name: s.upstream for s in stages(root)}, targets)  # an unknown stage fails now, before Prefect starts
    with exclusive_run(root, wait=wait):
        sync_dvc_yaml(root)
        started = time.time()
        try:
            with stop_on_signals():  # again inside the flow, where Prefect installs its own handler
                outcome = pipeline(str(root), targets, force, pools, experiment)
        except KeyboardInterrupt:
            raise HerdError(f"stopped by {STAGES.stopping or 'an interrupt'}: the running stage saved what it "
                            "could resume from; finished stages and dvc.lock are as they were") from None
    counts = {o: sum(v == o for v in outcome.values()) for o in ("ran", "restored", "skipped")}
    print(f"[herd] pipeline finished in {time.time() - started:.0f}s: {counts['ran']} ran, "
          f"{counts['restored']} restored, {counts['skipped']} skipped")


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


def cmd_report(args) -> None:
    from herd.evals.report import summary

    run_pipeline(["report"], False, args.wait, args.verbose)
    folder = project_root() / "artifacts" / "report"
    print(summary(folder))
    print(f"\nreport: {folder / 'report.html'} (and report.md beside it)")


def cmd_lineage(args) -> None:
    from herd.runtime import lineage, tracking

    root = project_root()
    tracking.setup(check_params(root).runtime.tracking, root)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per manifest read
    manifests = lineage.chain(args.target)
    print(f"{args.target}: {len(manifests)} stages, from the model back to the raw sources\n")
    print("\n".join(lineage.describe(m) for m in manifests))


def cmd_serve(args) -> None:
    from herd.runtime import tracking

    root = project_root()
    tcfg = check_params(root).runtime.tracking
    tracking.setup(tcfg, root)
    model = args.model or f"models:/{tcfg.policy_model}@{tcfg.alias}"
    env = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **os.environ,
           "MLFLOW_TRACKING_URI": tracking.tracking_uri(tcfg.uri, root)}
    cmd = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "--host", "127.0.0.1",
           "--port", str(args.port)]
    print(f"[herd] serving {model} on http://127.0.0.1:{args.port}/invocations (Ctrl-C stops)", flush=True)
    try:
        sys.exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        sys.exit(130)


def cmd_exp_run(args) -> None:
    set_verbosity(args.verbose)
    from herd.orchestration import experiments
    from herd.orchestration.flow import upto

    root = project_root()
    check_params(root)
    changes = experiments.parse_sets(args.set)
    name = args.name or experiments.name_for(changes)
    workspace = experiments.prepare(root, changes, name)
    print(f"[herd] experiment {name}: {', '.join(f'{k}={v}' for k, v in changes.items())}, in {workspace}", flush=True)
    try:
        run_pipeline(args.stages, False, False, args.verbose, args.pools, root=workspace, experiment=name)
        experiments.save(workspace, name, list(upto(dvc.graph(workspace), args.stages)) if args.stages else [])
    except HerdError as e:  # its log would go with the workspace
        kept = experiments.keep_logs(root, workspace, name)
        raise HerdError(str(e).replace(str(workspace / ".herd" / "logs"), str(kept))) from None
    finally:
        experiments.remove(root, workspace)
    print(f"[herd] experiment {name} saved: `dvc exp show` compares it, `dvc exp apply {name}` brings it here")


def cmd_deploy(args) -> None:
    from herd.orchestration.pools import deploy

    params = check_params(project_root())
    for line in deploy(params.runtime.pools):
        print(f"[herd] {line}")
    print("[herd] start a worker per pool in a clone of the project: `herd worker cpu`, `herd worker gpu`; "
          "then `herd run --pools`")


def cmd_worker(args) -> None:
    from herd.orchestration.pools import start_worker

    root = project_root()
    start_worker(root, args.pool, check_params(root).runtime.pools, args.name)


def cmd_check(args) -> None:
    check_params(project_root())
    print("params.yaml is valid")


def cmd_filter(args) -> None:
    from herd.data import filter_cli

    filter_cli.run(args)


def add_run_options(parser) -> None:
    parser.add_argument("--wait", action="store_true", help="queue behind a herd run already running in this checkout")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's log and full tracebacks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline through Prefect (only the stages that changed)")
    run.add_argument("stages", nargs="*", metavar="STAGE", help="run only up to and including these stages")
    run.add_argument("--force", action="store_true", help="rerun the named stages (all, without names) even if "
                     "up to date")
    run.add_argument("--profile", metavar="NAME", help="first write profiles/NAME.yaml into params.yaml (e.g. demo: "
                     "a larger model and budget that shows the task-level effects)")
    run.add_argument("--pools", action="store_true", help="run each stale stage on its Prefect work pool (training "
                     "stages on gpu, the rest on cpu; see `herd deploy`), outputs shared through the DVC remote")
    add_run_options(run)
    run.set_defaults(fn=cmd_run)
    report = sub.add_parser("report", help="bring the evaluation report up to date (running what it needs) and "
                            "print its verdicts; the report is artifacts/report/report.html and report.md")
    add_run_options(report)
    report.set_defaults(fn=cmd_report)
    lin = sub.add_parser("lineage", help="print the chain behind a model or output: every ancestor stage with its "
                         "params, input hashes, code version and MLflow run, down to the corpus sources")
    lin.add_argument("target", help="models:/NAME@ALIAS, models:/NAME/VERSION, or an output folder such as "
                     "artifacts/dpo")
    lin.set_defaults(fn=cmd_lineage)
    serve = sub.add_parser("serve", help="serve a registered model on 127.0.0.1 with `mlflow models serve` "
                           "(POST /invocations, e.g. {\"dataframe_split\": {\"columns\": [\"prompt\"], "
                           "\"data\": [[\"What is 2+3?\"]]}})")
    serve.add_argument("model", nargs="?", help="a models:/ URI (default: the policy's alias, "
                       "models:/herd-policy@champion); the reward model is models:/herd-reward@champion")
    serve.add_argument("--port", type=int, default=5001, help="port on 127.0.0.1 (default 5001)")
    serve.set_defaults(fn=cmd_serve)
    sub.add_parser("status", help="list the stages that would run and why, without running them").set_defaults(
        fn=cmd_status)
    dag = sub.add_parser("dag", help="list the recipe's stages; --write regenerates dvc.yaml")
    group = dag.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="regenerate dvc.yaml from herd/recipe.py")
    group.add_argument("--check", action="store_true", help="fail when dvc.yaml differs from the recipe")
    dag.set_defaults(fn=cmd_dag)
    sub.add_parser("check", help="validate params.yaml").set_defaults(fn=cmd_check)
    exp = sub.add_parser("exp", help="experiments: param variants that run side by side").add_subparsers(
        dest="exp_command", required=True)
    exp_run = exp.add_parser("run", help="run a param variant in a workspace of its own (several can run at "
                             "once) and save it as a DVC experiment (`dvc exp show`)")
    exp_run.add_argument("stages", nargs="*", metavar="STAGE", help="run only up to and including these stages")
    exp_run.add_argument("-S", "--set", action="append", required=True, metavar="KEY=VALUE",
                         help="a param to change, e.g. -S dpo.beta=0.2 (repeatable)")
    exp_run.add_argument("-n", "--name", help="the experiment's name (default: from the changes)")
    exp_run.add_argument("--pools", action="store_true", help="run its stages on the work pools")
    exp_run.add_argument("--verbose", action="store_true", help="show Prefect's log and full tracebacks")
    exp_run.set_defaults(fn=cmd_exp_run)
    sub.add_parser("deploy", help="create the work pools of runtime.pools (if missing) and the herd-stage "
                   "deployments on the Prefect server your profile points at").set_defaults(fn=cmd_deploy)
    worker = sub.add_parser("worker", help="start a Prefect worker for a pool in this clone (its workspace); it "
                            "runs one stage at a time")
    worker.add_argument("pool", choices=("cpu", "gpu"), help="which of runtime.pools")
    worker.add_argument("--name", help="the worker's name in the Prefect UI")
    worker.set_defaults(fn=cmd_worker)
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
