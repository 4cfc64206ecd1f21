"""The stage contract: validated params in, one atomic output folder out, with metrics.json and
a manifest.json lineage record, tracked as one MLflow run.

A stage module (tasks/<task>.py) declares what it needs and says nothing of where it sits in the
DAG; herd/recipe.py binds its input roles to upstream stages and gives it a name:

    SPEC = StageSpec(__doc__, inputs=("base", "samples"), params={"sft": SFTConfig, "train": TrainConfig})

    def run(st: StageRun) -> None:
        ... read st.input("base"), write into st.out, st.metrics["loss"] = 1.23 ...

    if __name__ == "__main__":
        main(SPEC, run)     # python -m tasks.sft --name sft --input base=anneal --input samples=rejection_sample

The output is written to a temporary folder and swapped in only on success, so a failed or
killed stage leaves the last good output untouched and never a half-written folder.
"""

import argparse
import fnmatch
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from herd.atomic import recover, swap_in
from herd.config import load_sections
from herd.errors import HerdError
from herd.runtime import tracking
from herd.runtime.checkpoints import Checkpoints, for_stage
from herd.runtime.config import RuntimeConfig
from herd.runtime.env import RESTORE_ONLY_ENV, VERBOSE_ENV, project_root, state_dir
from herd.training import distributed

CODE_DIRS = ("herd", "tasks")


@dataclass(frozen=True)
class Plot:
    """A DVC plot of one column of a table a stage writes (`dvc plots show` / `dvc plots diff`)."""

    table: str
    x: str
    y: str
    title: str
    template: str = "linear"


# Every stage that runs the training loop has its curve (herd/training/loop.py writes the table).
CURVE_PLOTS = (Plot("curve", "step", "loss", "training loss"), Plot("curve", "step", "lr", "learning rate"))


@dataclass(frozen=True)
class StageSpec:
    """What a stage module declares about itself: its help text, the roles of the upstream
    outputs it reads (`optional` ones may be left out; `inputs=None` takes any roles), the params
    sections it reads (with their schemas; `runtime` is always there), whether it may run
    data-parallel under torchrun, its headline metrics and the tables it plots.

    Headline metrics (keys of its metrics, shell-style patterns) go to metrics/<name>.json and
    plotted tables to plots/<name>/<table>.csv: small files tracked by git, so `dvc exp show`,
    `dvc metrics diff` and `dvc plots diff` compare them across commits and experiments while
    the full output stays in artifacts/<name>."""

    doc: str
    inputs: tuple[str, ...] | None
    params: dict[str, type]
    optional: tuple[str, ...] = ()
    distributed: bool = False
    headline: tuple[str, ...] = ()
    plots: tuple[Plot, ...] = ()
    model: str | None = None  # the kind of model it saves in model/ (base, policy, reward), logged to MLflow
    registers: str | None = None  # the runtime.tracking key naming the registered model it becomes
    gated: bool = False  # its version takes the alias only when its evaluation beats the alias' holder

    @property
    def trains(self) -> bool:
        """Whether it runs the training loop (which writes the curve): it belongs on a GPU."""
        return CURVE_PLOTS[0] in self.plots

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(p.table for p in self.plots))

    def check_roles(self, name: str, given: dict[str, str]) -> None:
        if self.inputs is None:
            return
        missing = [r for r in self.inputs if r not in given]
        unknown = [r for r in given if r not in self.inputs and r not in self.optional]
        if missing or unknown:
            roles = ", ".join([*self.inputs, *(f"[{r}]" for r in self.optional)]) or "none"
            raise HerdError(f"stage '{name}' reads the roles {roles}; it was given {', '.join(given) or 'none'}")


def hash_path(path: Path) -> str:
    """Content hash of a file or folder (relative names and bytes of every file, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path.parent if path.is_file() else path).as_posix().encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def code_version(root: Path) -> dict:
    """The git commit (when there is one) and a hash of the code that ran."""
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for f in sorted((root / d).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return {"git_commit": commit, "code_sha256": h.hexdigest()}


@dataclass
class StageRun:
    name: str
    cfg: DictConfig  # the stage's sections plus `runtime`
    root: Path
    out: Path  # the temporary output folder; becomes artifacts/<name> on success
    inputs: dict[str, Path]  # role -> upstream output folder
    input_hashes: dict[str, str]  # upstream stage -> content hash
    run_id: str
    model_kind: str | None = None  # the spec's `model`: what its model/ folder holds
    metrics: dict = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)  # name -> rows, written as <name>.csv
    manifest: dict = field(default_factory=dict)  # extra lineage fields (e.g. the raw sources)
    logger: tracking.MetricLogger | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def recipe_params(self) -> dict:
        """The params that determine the result (everything but `runtime`)."""
        return {k: v for k, v in OmegaConf.to_container(self.cfg, resolve=True).items() if k != "runtime"}

    def input(self, role: str) -> Path:
        return self.inputs[role]

    def upstream_manifest(self, role: str) -> dict:
        return json.loads((self.inputs[role] / "manifest.json").read_text())

    def run_key(self) -> str:
        """Identifies a run by everything that determines its result: a checkpoint resumes only
        a run with the same key."""
        parts = [self.name, self.recipe_params, self.input_hashes]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @cached_property
    def checkpoints(self) -> Checkpoints:
        """Resumable checkpoints: they survive a kill and are not a DVC output (see runtime.train.checkpoints)."""
        return for_stage(self.cfg.runtime.train.checkpoints, self.root, self.name)

    def checkpoint_dir(self) -> Path:
        return self.checkpoints.local()

    def log_step(self, metrics: dict[str, float], step: int) -> None:
        if self.logger:  # None on the non-zero ranks of a distributed run: rank 0 tracks
            self.logger.log(metrics, step)

    def lineage(self) -> dict:
        """Every ancestor back to the raw corpus: stage -> {run_id, output hash, ...}."""
        chain = {}
        for role in self.inputs:
            manifest = self.upstream_manifest(role)
            chain.update(manifest.get("lineage", {}))
            chain[manifest["stage"]] = {"run_id": manifest["mlflow_run_id"], "output_sha256": manifest["output_sha256"]}
            if "sources" in manifest:
                chain[manifest["stage"]]["sources"] = manifest["sources"]
        return chain


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def stage_run(spec: StageSpec, name: str, inputs: dict[str, str], root: Path | None = None):
    """Run stage `name` of `spec`, reading the outputs of `inputs` (role -> upstream stage)."""
    root = root or project_root()
    if os.environ.get(RESTORE_ONLY_ENV) == name:
        raise HerdError(f"stage {name} ran on a worker, but DVC's run-cache on the remote cannot restore it here "
                        "(its outputs are missing there, or this checkout differs from the worker's): "
                        "check that both use the same DVC remote (`dvc remote list`)")
    spec.check_roles(name, inputs)
    cfg = load_sections(root / "params.yaml", {**spec.params, "runtime": RuntimeConfig})
    artifacts = root / "artifacts"
    final = artifacts / name
    recover(final)
    input_dirs = {}
    for role, stage in inputs.items():
        path = artifacts / stage
        recover(path)
        if not (path / "manifest.json").is_file():
            raise HerdError(f"stage '{name}' needs the output of '{stage}' at {path}, which is missing: "
                            f"run `dvc repro {stage}` first")
        input_dirs[role] = path
    input_hashes = {stage: hash_path(artifacts / stage) for stage in inputs.values()}
    distributed.init()
    if not distributed.is_main():
        yield from _worker_run(spec, name, cfg, root, input_dirs, input_hashes)
        return
    tmp = artifacts / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    import mlflow

    experiment_id = tracking.setup(cfg.runtime.tracking, root)
    tracking.close_abandoned_runs(experiment_id, name, root)
    code = code_version(root)
    parent, launcher_tags = tracking.launcher_parent(experiment_id, (code["git_commit"] or code["code_sha256"])[:10])
    started = time.time()
    st = StageRun(name, cfg, root, tmp, input_dirs, input_hashes, "", spec.model)
    params = st.recipe_params
    _seed_everything(int(params.get("seed", 0)))
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent,
                          tags={"herd.stage": name, "herd.workspace": tracking.workspace_tag(root),
                                **launcher_tags}) as run:
        mlflow.log_params(tracking.flatten(params))
        st.run_id, st.logger = run.info.run_id, tracking.MetricLogger(run.info.run_id)
        try:
            yield st
        except BaseException:
            st.logger.flush()
            shutil.rmtree(tmp, ignore_errors=True)
            mlflow.set_tag("herd.error", traceback.format_exc(limit=3)[-5000:])
            mlflow.end_run(status="KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED")
            raise
        st.logger.flush()
        wall = time.time() - started
        st.metrics["wall_time_s"] = round(wall, 2)
        (tmp / "metrics.json").write_text(json.dumps(st.metrics, indent=2, sort_keys=True) + "\n")
        missing = [t for t in spec.tables if t not in st.tables]
        if missing:
            raise HerdError(f"stage {name} declares the plots {', '.join(missing)} but wrote no such table")
        for table, rows in st.tables.items():
            write_csv(rows, tmp / f"{table}.csv")
        for path in draw_curves(spec, st, tmp):
            mlflow.log_artifact(str(path), "plots")
        scalars = {k: float(v) for k, v in st.metrics.items() if isinstance(v, (int, float))}
        if scalars:
            mlflow.log_metrics(scalars)
        manifest = {
            "stage": name,
            "params": params,
            "inputs": input_hashes,
            "output_sha256": _hash_outputs(tmp),
            "code": code,
            "seed": params.get("seed"),
            "wall_time_s": round(wall, 2),
            "mlflow_run_id": run.info.run_id,
            "lineage": st.lineage(),
            **st.manifest,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        mlflow.log_dict(manifest, "manifest.json")
        swap_in(tmp, final)
        st.out = final
        publish(spec, st, root)
        if spec.model:
            from herd.runtime import registry  # MLflow's model flavours: only where a model is logged

            info = registry.log_model(st, final / "model", spec.model)
            if spec.registers:
                registry.register(st, info, getattr(cfg.runtime.tracking, spec.registers), alias=not spec.gated)


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def draw_curves(spec: StageSpec, st: StageRun, folder: Path) -> list[Path]:
    """The stage's line plots as PNGs beside its tables (a stage draws its other figures itself)."""
    from herd.plots import curve_panels

    paths = []
    for plot in spec.plots:
        if plot.template == "linear":
            paths.append(folder / f"{plot.table}_{plot.y}.png")
            curve_panels({st.name: st.tables[plot.table]}, plot.y, plot.y, plot.title, paths[-1], x=plot.x)
    return paths


def headline(spec: StageSpec, metrics: dict) -> dict:
    return {k: v for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and any(fnmatch.fnmatchcase(k, p) for p in spec.headline)}


def publish(spec: StageSpec, st: StageRun, root: Path) -> None:
    """The stage's git-tracked summary (see StageSpec): metrics/<name>.json keyed by the stage's
    name (so `dvc exp show` shows `<stage>.<metric>`), and plots/<name>/ with its plotted tables."""
    if spec.headline:
        path = root / "metrics" / f"{st.name}.json"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({st.name: headline(spec, st.metrics)}, indent=2) + "\n")
        tmp.replace(path)
    if spec.plots:
        folder = root / "plots" / st.name
        tmp = folder.with_name(f".{st.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for table in spec.tables:  # the tables as written into its output
            shutil.copy(st.out / f"{table}.csv", tmp / f"{table}.csv")
        swap_in(tmp, folder)


def _worker_run(spec: StageSpec, name: str, cfg, root: Path, input_dirs: dict[str, Path],
                input_hashes: dict[str, str]):
    """A non-zero rank of a distributed run computes alongside rank 0 but writes nothing that
    lasts: its output folder is thrown away and it opens no MLflow run."""
    tmp = root / "artifacts" / f".{name}.rank{distributed.rank()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield StageRun(name, cfg, root, tmp, input_dirs, input_hashes, "", spec.model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hash_outputs(folder: Path) -> str:
    h = hashlib.sha256()
    # The product itself: not the run's records (metrics.json has the wall time, a model card the run id).
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("metrics.json", "manifest.json",
                                                                                    "README.md")):
        h.update(f.relative_to(folder).as_posix().encode() + hash_path(f).encode())
    return h.hexdigest()


def _roles(spec: StageSpec) -> str:
    if spec.inputs is None:
        return "any (each upstream stage under its own name)"
    return ", ".join([*spec.inputs, *(f"{r} (optional)" for r in spec.optional)]) or "none"


def _parse_args(spec: StageSpec, task: str, argv: list[str]) -> tuple[str, dict[str, str]]:
    """(stage name, role -> upstream stage) from the command line, which dvc.yaml writes from the
    recipe. Without arguments, the recipe's one stage that runs this module."""
    sections = ", ".join(spec.params)
    parser = argparse.ArgumentParser(
        prog=f"python -m tasks.{task}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=spec.doc.strip(),
        epilog=f"input roles: {_roles(spec)}\nparams sections: {sections or 'none'} (+ runtime)\n"
               "Without arguments, runs as the recipe's stage for this module (see `herd dag`).")
    parser.add_argument("--name", help="the stage's name (its output is artifacts/<name>)")
    parser.add_argument("--input", action="append", default=[], metavar="ROLE=STAGE",
                        help="read the output of STAGE as ROLE (once per role)")
    args = parser.parse_args(argv)
    inputs = {}
    for item in args.input:
        role, sep, stage = item.partition("=")
        if not sep or not role or not stage:
            parser.error(f"--input {item}: expected ROLE=STAGE")
        inputs[role] = stage
    if args.name:
        return args.name, inputs
    if inputs:
        parser.error("--input needs --name")
    recipe = importlib.import_module("herd.recipe")  # only to fill in a bare command line
    stages = [s for s in recipe.stages(project_root()) if s.task == task]
    if len(stages) != 1:
        raise HerdError(f"the recipe runs tasks.{task} as {', '.join(s.name for s in stages) or 'no stage'}; "
                        "name one with --name and --input")
    return stages[0].name, dict(stages[0].inputs)


def main(spec: StageSpec, run: Callable[[StageRun], None]) -> None:
    """CLI entry shared by every stage: errors that name their cause print without a traceback.
    A stage that can train data-parallel relaunches itself under torchrun when
    runtime.train.nproc_per_node > 1."""
    module = sys.modules["__main__"].__spec__.name
    name = module.rpartition(".")[2]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop request, handled like Ctrl-C
    try:
        name, inputs = _parse_args(spec, module.rpartition(".")[2], sys.argv[1:])
        if spec.distributed and "WORLD_SIZE" not in os.environ:
            runtime = load_sections(project_root() / "params.yaml", {"runtime": RuntimeConfig}).runtime
            nproc = runtime.train.nproc_per_node
            if nproc > 1:
                sys.exit(subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={nproc}", "-m", module, *sys.argv[1:]]))
        with stage_run(spec, name, inputs) as st:
            run(st)
    except HerdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: stage {name} stopped by a signal; its previous output is untouched", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug or a library failure: one line here, the traceback in a log
        log = state_dir() / "logs" / f"{name}.traceback"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        if os.environ.get(VERBOSE_ENV):
            traceback.print_exc()
        print(f"error: stage {name} failed: {type(exc).__name__}: {exc} (traceback in {log})", file=sys.stderr)
        sys.exit(2)
