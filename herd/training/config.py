"""The `train` section, read by every stage that trains, evaluates or generates with a model."""

from dataclasses import dataclass

from herd.config import ParamError, fraction, non_negative, positive


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


def check_optimization(section) -> None:
    """The rules every training section shares: positive sizes and a finite positive learning
    rate, warmup within the run, non-negative decay, a positive clip."""
    positive(section, "steps", "batch_size", "seq_len", "lr", "grad_clip")
    non_negative(section, "weight_decay")
    if hasattr(section, "warmup_steps"):
        non_negative(section, "warmup_steps")
        if section.warmup_steps > section.steps:
            raise ParamError("warmup_steps", f"must be at most steps ({section.steps}), got {section.warmup_steps}")
    if hasattr(section, "min_lr_ratio"):
        fraction(section, "min_lr_ratio")
