"""Context extension (Llama 3.1, Qwen 2, AFM): its steps of sequence length, token budget and
RoPE, the data mix (long documents, generated long-context tasks, replay) and the gate that
decides whether a step is done. The stages extend and extend_control use it."""

import zlib
from dataclasses import dataclass, field

from herd.config import ParamError, fraction, non_negative, positive
from herd.data.domains import blend, check_weights, general_mix
from herd.data.long_tasks import TaskMaker, TaskRows, check_tasks
from herd.evals.long_context import grid_metrics, needle_grid
from herd.model.llama import ROPE_SCALINGS
from herd.training.lm import WindowSampler
from herd.training.lm_stage import eval_losses


@dataclass
class ExtendStep:
    """One lengthening step: train `tokens` tokens at `seq_len` with this RoPE base."""

    seq_len: int
    tokens: int
    rope_base: float
    # linear | ntk | llama3 scale RoPE by seq_len / the pretrained context; none: the base alone
    rope_scaling: str = "none"


@dataclass
class Gate:
    """When a step is done: passkey retrieval at its length, over needle depths, at least `retrieval`,
    and the short-context loss at most `short_loss_tolerance` (relative) above the pre-extension
    model's. A failed step is repeated, at most `max_repeats` times; then the stage goes on and
    records the failure."""

    retrieval: float = 0.0
    short_loss_tolerance: float = 0.03
    max_repeats: int = 0


@dataclass
class ExtendConfig:
    """Context lengthening in steps, each re-warming and re-decaying the learning rate."""

    steps: list[ExtendStep] = field(default_factory=lambda: [ExtendStep(512, 300_000, 40000.0),
                                                             ExtendStep(1024, 600_000, 100000.0)])
    batch_size: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    long_mix: dict[str, float] = field(default_factory=lambda: {"long": 0.6, "code": 0.4})  # long documents
    task_frac: float = 0.25  # share of each batch that is generated long-context tasks
    tasks: dict[str, float] = field(default_factory=lambda: {"passkey": 1.0, "kv": 1.0, "multi_needle": 1.0,
                                                             "qa": 1.0})
    replay_frac: float = 0.1  # share of the original short-context mix (continued-pretraining replay)
    gate: Gate = field(default_factory=Gate)
    gate_tasks: int = 2  # passkey tasks per needle depth (5 depths) in a gate's retrieval check

    def check(self, root) -> None:
        positive(self, "batch_size", "lr", "grad_clip", "gate_tasks")
        non_negative(self, "weight_decay", "warmup_steps")
        fraction(self, "min_lr_ratio", "task_frac", "replay_frac")
        check_weights(self.long_mix, "long_mix")
        check_tasks(self.tasks, "tasks")
        fraction(self.gate, "retrieval", "short_loss_tolerance")
        if self.gate.max_repeats < 0:
            raise ParamError("gate.max_repeats", f"must be at least 0, got {self.gate.max_repeats}")
        if not self.steps:
            raise ParamError("steps", "needs at least one step")
        for i, s in enumerate(self.steps):
            if s.rope_scaling not in ROPE_SCALINGS:
                raise ParamError(f"steps[{i}].rope_scaling",
                                 f"'{s.rope_scaling}' is not one of {', '.join(ROPE_SCALINGS)}")
            if s.rope_base <= 0:
                raise ParamError(f"steps[{i}].rope_base", f"must be positive, got {s.rope_base}")
            if i and s.seq_len <= self.steps[i - 1].seq_len:
                raise ParamError(f"steps[{i}].seq_len",
                                 f"must be longer than the step before ({self.steps[i - 1].seq_len})")
            if optimizer_steps(self, s) <= self.warmup_steps:
                raise ParamError(f"steps[{i}].tokens", f"{s.tokens} tokens make {optimizer_steps(self, s)} optimizer "
                                 f"steps of {self.batch_size} x {s.seq_len} tokens, not more than warmup_steps "
                                 f"({self.warmup_steps})")


def optimizer_steps(cfg: ExtendConfig, step: ExtendStep) -> int:
    return step.tokens // (cfg.batch_size * step.seq_len)


def apply_rope(model, step: ExtendStep, pretrained: int) -> None:
    """Set the model's RoPE and context to the step's; scaling is relative to the pretrained context."""
    cfg = model.cfg
    cfg.rope_base, cfg.max_seq_len, cfg.rope_scaling = step.rope_base, step.seq_len, step.rope_scaling
    cfg.rope_factor = step.seq_len / pretrained if step.rope_scaling != "none" else 1.0
    cfg.rope_original_len = pretrained if step.rope_scaling != "none" else 0


def sampler(cfg: ExtendConfig, step: ExtendStep, phase: str, streams: dict, maker: TaskMaker, seed: int,
            eot_id: int) -> WindowSampler:
    """One phase's batches: windows of the step's length drawn to `mix`, and in place of
    `task_frac` of them generated long-context tasks; both depend on (seed, phase, step) only."""
    tasks = TaskRows(maker, dict(cfg.tasks), round(cfg.task_frac * cfg.batch_size), f"{seed}:{phase}")
    windows_seed = zlib.crc32(f"{seed}:{phase}".encode())
    return WindowSampler(streams, mix(cfg, streams), step.seq_len, cfg.batch_size, windows_seed,
                         steps=optimizer_steps(cfg, step), eot_id=eot_id, tasks=tasks)


def mix(cfg: ExtendConfig, streams: dict) -> dict[str, float]:
    """Long documents to `long_mix`, plus `replay_frac` of the original mix (by size) so that
    short-context skill is kept."""
    return blend(dict(cfg.long_mix), general_mix(streams), cfg.replay_frac)


def gate(st, model, maker, step: ExtendStep, i: int, short_before: float, val, pretrained: int) -> bool:
    """Llama 3.1's criterion for moving on: retrieval at the new length, short-context loss recovered."""
    cfg = st.cfg.extend
    rows = [r for r in needle_grid(model, maker, [step.seq_len], 5, cfg.gate_tasks, st.seed, st.cfg.train.precision)
            if r["kind"] == "passkey"]
    retrieval = grid_metrics(rows)[f"retrieval_passkey_len{step.seq_len}"]
    rise = (eval_losses(st, model, val, pretrained)["mean"] - short_before) / short_before
    passed = retrieval >= cfg.gate.retrieval and rise <= cfg.gate.short_loss_tolerance
    st.metrics.update({f"gate_{i}_retrieval": retrieval, f"gate_{i}_short_loss_rise": round(rise, 4),
                       f"gate_{i}_passed": int(passed)})
    return passed
