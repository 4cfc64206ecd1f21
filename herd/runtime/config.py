"""The `runtime` section: every knob that never changes a result (worker processes, cadences,
compilation, where runs are tracked). No stage declares it as a DVC param, so changing it reruns
nothing, and resume keys leave it out; every stage may read it."""

from dataclasses import dataclass, field

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
    # stop a stage whose smoothed loss rises above this multiple of its best (0: off)
    divergence_factor: float = 3.0

    def check(self, root) -> None:
        for key in ("checkpoint_every", "log_every", "nproc_per_node"):
            if getattr(self, key) < 1:
                raise ParamError(f"train.{key}", "must be at least 1")
        if not (self.divergence_factor == 0 or self.divergence_factor > 1):
            raise ParamError("train.divergence_factor", f"must be 0 (off) or above 1, got {self.divergence_factor}")


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
class RuntimeConfig:
    filter: FilterRuntime = field(default_factory=FilterRuntime)
    train: TrainRuntime = field(default_factory=TrainRuntime)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self, root) -> None:
        self.filter.check(root)
        self.train.check(root)
