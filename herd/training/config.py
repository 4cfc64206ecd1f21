"""The `train` section, read by every stage that trains, evaluates or generates with a model."""

from dataclasses import dataclass

from herd.config import ParamError


@dataclass
class TrainConfig:
    """The `train` section: what every training stage shares that changes its result (cadences,
    processes and compilation are runtime knobs: runtime.train)."""

    precision: str = "bf16"  # bf16 autocast with fp32 master weights, or fp32
    eval_batches: int = 8  # held-out windows per domain in every loss evaluation

    def check(self, root) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ParamError("precision", f"'{self.precision}' is not bf16 or fp32")
        if self.eval_batches < 1:
            raise ParamError("eval_batches", "must be at least 1")
