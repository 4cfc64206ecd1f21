"""The `runtime` section: every knob that never changes a result (worker processes, cadences,
compilation, where runs are tracked). No stage declares it as a DVC param, so changing it reruns
nothing, and resume keys leave it out; every stage may read it."""

from dataclasses import dataclass, field
from typing import Any

from herd.config import ParamError


@dataclass
class FilterRuntime:
    workers: int = 2  # processes scoring shards in parallel (the result is the same for any number)
    shard_size: int = 1000  # documents per shard (bounds memory per worker)

    def check(self, root) -> None:
        for key in ("workers", "shard_size"):
            if getattr(self, key) < 1:
                raise ParamError(f"filter.{key}", "must be at least 1")


@dataclass
class TrainRuntime:
    checkpoint_every: int = 100  # steps between resumable checkpoints (resume is exact)
    log_every: int = 10
    nproc_per_node: int = 1  # >1 relaunches pretraining under torchrun (DDP computes the same update)
    compile: bool = False  # torch.compile the decoder blocks: faster steps after a compile (pays off on long runs)
    # stop a stage whose smoothed loss rises above this multiple of its best (0: off) and by at
    # least divergence_min_rise over it: near a loss of zero a ratio alone flags noise (0.04 -> 0.14)
    divergence_factor: float = 3.0
    divergence_min_rise: float = 0.5
    # where resumable checkpoints live: empty = .herd/checkpoints; a folder (shared storage, so a
    # retry on another worker resumes) is used in place; an fsspec URL (s3://, gs://, file://...)
    # is mirrored: each checkpoint is uploaded when written and downloaded when a stage starts
    checkpoints: str = ""

    def check(self, root) -> None:
        for key in ("checkpoint_every", "log_every", "nproc_per_node"):
            if getattr(self, key) < 1:
                raise ParamError(f"train.{key}", "must be at least 1")
        if not (self.divergence_factor == 0 or self.divergence_factor > 1):
            raise ParamError("train.divergence_factor", f"must be 0 (off) or above 1, got {self.divergence_factor}")
        if self.divergence_min_rise < 0:
            raise ParamError("train.divergence_min_rise", f"must be at least 0, got {self.divergence_min_rise}")


@dataclass
class GenerateRuntime:
    # torch.compile the prompt pass and each decode step (herd/model/decoding.py): eager's logits up
    # to float rounding (like train.compile; a rare sampled token differs), ~1.5x eager's tokens/s
    # at the default size on CPU, after compiling ~100 s the first time on a machine and ~25 s per
    # process after (inductor's cache): for sampling runs of minutes, not the default pipeline's
    # seconds
    compile: bool = False


@dataclass
class TrackingConfig:
    """Where runs go."""

    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else a SQLite store in .herd/
    experiment: str = "herd"
    register: bool = True
    policy_model: str = "herd-policy"
    reward_model: str = "herd-reward"
    alias: str = "champion"


@dataclass
class PoolConfig:
    """A Prefect work pool the stages of one kind run on (`herd deploy` creates it if missing)."""

    name: str = "cpu"
    type: str = "process"  # the pool type when herd creates it: process, docker, kubernetes, ...
    concurrency: int = 1  # flow runs at once on the pool
    # the deployment's job variables: env (e.g. CUDA_VISIBLE_DEVICES), working_dir, image, ...
    job_variables: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolsConfig:
    """`herd run --pools`: each stale stage runs as a flow run of the `herd-stage` deployment on its
    pool, in a worker's own clone; outputs travel through the DVC remote."""

    cpu: PoolConfig = field(default_factory=PoolConfig)  # data, tokenizer, sampling, evaluation
    gpu: PoolConfig = field(default_factory=lambda: PoolConfig(
        "gpu", job_variables={"env": {"CUDA_VISIBLE_DEVICES": "0"}}))  # the stages that train
    stages: dict[str, str] = field(default_factory=dict)  # stage -> cpu | gpu, overriding the above
    repo: str = ""  # git URL workers fetch the pipeline's commit from (empty: this checkout's folder)
    retries: int = 2  # a stage whose worker is lost (its flow run crashed) is dispatched again; a failure is not
    timeout_s: int = 86400  # the longest a stage may wait for its flow run

    def check(self, root) -> None:
        for key in ("cpu", "gpu"):
            if getattr(self, key).concurrency < 1:
                raise ParamError(f"pools.{key}.concurrency", "must be at least 1")
        wrong = {stage: pool for stage, pool in self.stages.items() if pool not in ("cpu", "gpu")}
        if wrong:
            raise ParamError("pools.stages", f"a stage runs on cpu or gpu, got {wrong}")
        if self.retries < 0:
            raise ParamError("pools.retries", "must be 0 or more")


@dataclass
class RuntimeConfig:
    filter: FilterRuntime = field(default_factory=FilterRuntime)
    train: TrainRuntime = field(default_factory=TrainRuntime)
    generate: GenerateRuntime = field(default_factory=GenerateRuntime)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pools: PoolsConfig = field(default_factory=PoolsConfig)

    def check(self, root) -> None:
        self.filter.check(root)
        self.train.check(root)
        self.pools.check(root)
