"""The stage contract (DESIGN.md §3): validated params in, one atomic output folder out, with
metrics.json and a manifest.json lineage record, tracked as one MLflow run.

    with stage_run("sft", inputs=["rejection_sample", "anneal"]) as st:
        ... write into st.out, read st.input("anneal") ...
        st.metrics["loss"] = 1.23

The output is written to a temporary folder and swapped in only on success, so a failed or
killed stage leaves the last good output untouched and never a half-written folder.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from herd import distributed, tracking
from herd.atomic import recover, swap_in
from herd.config import load_params, stage_config
from herd.env import project_root, state_dir
from herd.errors import HerdError

CODE_DIRS = ("herd", "tasks")


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
    cfg: DictConfig
    root: Path
    out: Path  # the temporary output folder; becomes artifacts/<name> on success
    inputs: dict[str, Path]
    input_hashes: dict[str, str]
    run_id: str
    metrics: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)  # extra lineage fields (e.g. the raw sources)
    logger: tracking.MetricLogger | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    def input(self, stage: str) -> Path:
        return self.inputs[stage]

    def upstream_manifest(self, stage: str) -> dict:
        return json.loads((self.inputs[stage] / "manifest.json").read_text())

    def checkpoint_dir(self) -> Path:
        """A persistent folder for resumable checkpoints (survives a kill; not a DVC output)."""
        path = state_dir(self.root) / "checkpoints" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_step(self, metrics: dict[str, float], step: int) -> None:
        if self.logger:  # None on the non-zero ranks of a distributed run: rank 0 tracks
            self.logger.log(metrics, step)

    def lineage(self) -> dict:
        """This stage and every ancestor back to the raw corpus: stage -> {run_id, output hash, ...}."""
        chain = {}
        for stage in self.inputs:
            manifest = self.upstream_manifest(stage)
            chain.update(manifest.get("lineage", {}))
            chain[stage] = {"run_id": manifest["mlflow_run_id"], "output_sha256": manifest["output_sha256"]}
            if "sources" in manifest:
                chain[stage]["sources"] = manifest["sources"]
        return chain


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def stage_run(name: str, inputs: list[str] = ()):
    root = project_root()
    cfg = stage_config(name, root)
    artifacts = root / "artifacts"
    final = artifacts / name
    recover(final)
    input_dirs = {}
    for stage in inputs:
        recover(artifacts / stage)
        path = artifacts / stage
        if not (path / "manifest.json").is_file():
            raise HerdError(f"stage '{name}' needs the output of '{stage}' at {path}, which is missing: "
                            f"run `dvc repro {stage}` first")
        input_dirs[stage] = path
    distributed.init()
    if not distributed.is_main():
        yield from _worker_run(name, cfg, root, input_dirs)
        return
    tmp = artifacts / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    import mlflow

    experiment_id = tracking.setup(cfg.tracking, root)
    parent = os.environ.get(tracking.PARENT_RUN_ENV) or None
    params = OmegaConf.to_container(cfg, resolve=True)
    started = time.time()
    _seed_everything(int(params.get("seed", 0)))
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent,
                          tags={"herd.stage": name}) as run:
        mlflow.log_params(tracking.flatten({k: v for k, v in params.items() if k != "tracking"}))
        input_hashes = {stage: hash_path(path) for stage, path in input_dirs.items()}
        st = StageRun(name, cfg, root, tmp, input_dirs, input_hashes, run.info.run_id,
                      logger=tracking.MetricLogger(run.info.run_id))
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
        scalars = {k: float(v) for k, v in st.metrics.items() if isinstance(v, (int, float))}
        if scalars:
            mlflow.log_metrics(scalars)
        manifest = {
            "stage": name,
            "params": {k: v for k, v in params.items() if k != "tracking"},
            "inputs": input_hashes,
            # Hash of the product itself (metrics.json holds the wall time, which varies run to run).
            "output_sha256": _hash_outputs(tmp),
            "code": code_version(root),
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


def _worker_run(name: str, cfg, root: Path, input_dirs: dict[str, Path]):
    """A non-zero rank of a distributed run computes alongside rank 0 but writes nothing that
    lasts: its output folder is thrown away and it opens no MLflow run."""
    tmp = root / "artifacts" / f".{name}.rank{distributed.rank()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield StageRun(name, cfg, root, tmp, input_dirs, {s: hash_path(p) for s, p in input_dirs.items()}, "")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hash_outputs(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("metrics.json", "manifest.json")):
        h.update(f.relative_to(folder).as_posix().encode() + hash_path(f).encode())
    return h.hexdigest()


def main(run, distributed_ok: bool = False) -> None:
    """CLI entry shared by every stage: errors that name their cause print without a traceback.
    A stage that can train data-parallel relaunches itself under torchrun when
    train.nproc_per_node > 1."""
    try:
        if distributed_ok and "WORLD_SIZE" not in os.environ:
            nproc = load_params().train.nproc_per_node
            if nproc > 1:
                module = sys.modules["__main__"].__spec__.name
                sys.exit(subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={nproc}", "-m", module]))
        run()
    except HerdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
