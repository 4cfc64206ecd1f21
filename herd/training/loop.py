"""The training loop every training stage shares, with exact resume.

Batches are a pure function of the step (`batch_at(step)`), so the data position is the step
itself; the checkpoint holds the model, the AdamW state, the step and the RNG state. A run killed
at any point and restarted ends with the same weights as an uninterrupted one.
"""

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from herd.atomic import recover, swap_in
from herd.errors import HerdError
from herd.model.cross_entropy import IGNORE
from herd.runtime.checkpoints import Checkpoints
from herd.runtime.config import TrainRuntime
from herd.training import distributed
from herd.training.config import TrainConfig
from herd.training.precision import autocast


@contextmanager
def compiled_blocks(model: torch.nn.Module, enabled: bool):
    """torch.compile each decoder block for the training loop, then back to eager for evaluation
    and generation. Inductor fuses the norms, RoPE and SwiGLU around the matmuls (1.24x a step on
    this CPU, after ~15 s of compiling). The compiled forward is an instance attribute, so parameter
    names, and so checkpoints, are unchanged."""
    blocks = list(model.model.layers) if enabled else []
    for block in blocks:
        block.forward = torch.compile(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def make_optimizer(model: torch.nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; matrices decay, gains (1-D parameters) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95), eps=1e-8, fused=True)


def _save_state(folder: Path, model, opt, step: int, key: str, curve: list[dict]) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    # Tied weights share storage; safetensors stores each tensor once, so drop the alias.
    seen, unique = set(), {}
    for k, v in tensors.items():
        if k.startswith("model.") and v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        unique[k] = v.clone() if k.startswith("model.") else v
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(unique, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "key": key, "curve": curve,
                                                "param_groups": opt_state["param_groups"]}))
    swap_in(tmp, folder)


def _load_state(folder: Path, model, opt, key: str) -> tuple[int, list[dict]]:
    """Restore a checkpoint of this exact run (same key); returns the step to continue from and
    the training curve logged so far."""
    recover(folder)
    meta_path = folder / "state.json"
    if not meta_path.is_file():
        return 0, []
    meta = json.loads(meta_path.read_text())
    if meta["key"] != key:
        return 0, []  # a checkpoint of different params or inputs: start over
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    return int(meta["step"]), meta["curve"]


def _size(batch: dict) -> int:
    """What a micro-batch's mean loss averages over: its target tokens, or else its rows."""
    if "labels" in batch:
        return int((batch["labels"] != IGNORE).sum())
    return len(batch["input_ids"])


def shard(batch: dict, rank: int, world: int) -> dict:
    """This rank's rows of a batch (every tensor is split along its first dimension)."""
    if world == 1:
        return batch
    return {k: v[rank::world] if torch.is_tensor(v) else v for k, v in batch.items()}


def train(
    st,
    model: torch.nn.Module,
    *,
    steps: int,
    lr_at: Callable[[int], float],
    batch_at: Callable[[int], list[dict]],
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]],
    weight_decay: float,
    grad_clip: float,
    key: str,
    eval_fn: Callable[[], dict] | None = None,
    on_step_end: Callable[[int, torch.nn.Module], None] | None = None,
    flops_per_token: float | None = None,
    phase: str | None = None,
) -> dict:
    """Train for `steps` optimizer steps, resuming from the stage's checkpoint folder.

    batch_at(step) returns the step's micro-batches (gradient accumulation: one backward each).
    loss_fn returns (mean loss, metrics); metrics may include `tokens` (for tokens/s and MFU). Metric
    values may be tensors on the device: the loop reads them back only when it logs.
    Under torchrun every rank takes its share of each micro-batch and DDP averages the gradients,
    so N processes compute the same update as one.

    A stage that trains in several phases (extend's steps) names each `phase`: each resumes from
    its own checkpoint, which is kept when the phase completes, so a rerun of the stage passes over
    finished phases (restoring their weights) instead of repeating them.
    """
    precision, tcfg = st.cfg.train.precision, st.cfg.runtime.train
    rank, world = distributed.rank(), distributed.world_size()
    model.to(distributed.device())
    opt = make_optimizer(model, weight_decay)
    ckpt = st.checkpoint_dir() / (phase or "latest")
    start, curve = _load_state(ckpt, model, opt, key)

    def save(done: int) -> None:
        _save_state(ckpt, model, opt, done, key, curve)
        st.checkpoints.written(ckpt)
    if start and rank == 0:
        print(f"[{st.name}] resuming from step {start}/{steps}")
    ddp = distributed.wrap(model)
    model.train()
    peak = measured_peak_flops() if flops_per_token else None
    history: dict = {}
    t0, tokens = time.time(), 0
    bar = tqdm(range(start, steps), desc=st.name, unit="step", initial=start, total=steps, mininterval=2,
               disable=rank != 0)
    guard = DivergenceGuard(tcfg.divergence_factor, tcfg.divergence_min_rise)
    pending = PendingLosses(st.name, guard)
    with compiled_blocks(model, tcfg.compile), deferred_interrupts() as stop:
        for step in bar:
            lr = lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            micro_batches = batch_at(step)
            total = sum(_size(mb) for mb in micro_batches)
            rows = sum(len(mb["input_ids"]) for mb in micro_batches)
            parts, metrics = [], {}
            for i, mb in enumerate(micro_batches):
                mb = shard(mb, rank, world)
                # Weighted so the accumulated, rank-averaged gradient is that of the whole batch's mean.
                weight = _size(mb) * world / total
                mb = distributed.to_device(mb)
                # DDP all-reduces (averages) gradients on the last micro-batch only.
                with distributed.no_sync(ddp, last=i == len(micro_batches) - 1), autocast(precision):
                    loss, metrics = loss_fn(ddp, mb)
                (loss * weight).backward()
                parts.append((loss.detach().double(), weight))
                tokens += metrics.pop("tokens", 0) * world
            pending.add(step, parts)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            if step % tcfg.log_every == 0 or done == steps:
                loss_sum = pending.settle()
                elapsed = max(1e-9, time.time() - t0)
                logged = {"loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": int(tokens) / elapsed, "batch_size": rows,
                          "seq_len": micro_batches[0]["input_ids"].shape[1],
                          **{k: float(v) for k, v in metrics.items()}}
                if peak:
                    logged["mfu"] = int(tokens) / elapsed * flops_per_token / (peak * world)
                st.log_step(logged, step)
                curve.append({"step": step, "loss": round(loss_sum, 5), "lr": lr})
                bar.set_postfix(loss=f"{loss_sum:.3f}")
                history = logged
            if on_step_end:
                on_step_end(step, model)
            if eval_fn and (done % (tcfg.checkpoint_every * 2) == 0 or done == steps):
                model.eval()
                st.log_step({f"val_{k}": v for k, v in eval_fn().items()}, step)
                model.train()
            if done % tcfg.checkpoint_every == 0 and done < steps:
                pending.settle()  # never checkpoint a step whose loss was not finite
                if rank == 0:
                    save(done)
                distributed.barrier()
            if stop and done < steps:  # SIGINT/SIGTERM: keep this step's state, then stop
                pending.settle()
                if rank == 0:
                    save(done)
                    print(f"[{st.name}] stopped at step {done}/{steps}; the next run resumes from here", flush=True)
                raise KeyboardInterrupt
    if phase and start < steps and rank == 0:
        save(steps)
    model.eval()
    st.tables["curve"] = curve  # the loss and learning rate by step, across resumes
    elapsed = max(1e-9, time.time() - t0)
    last = curve[-1]["loss"] if curve else float("nan")
    tokens = int(tokens)
    result = {"final_loss": history.get("loss", last), "tokens_per_s": round(tokens / elapsed, 1)}
    if peak:
        result["mfu"] = round(tokens / elapsed * flops_per_token / (peak * world), 4)
        result["peak_flops"] = peak
    return result


class DivergenceGuard:
    """Flags a finite blow-up: the loss's moving average far above its best so far (`factor` times
    and `min_rise` more), the first step's loss included (NaN is caught apart). It judges from step
    `after` on, so one bad early batch cannot stop a run."""

    def __init__(self, factor: float, min_rise: float = 0.0, after: int = 10, decay: float = 0.9):
        self.factor, self.min_rise, self.after, self.decay = factor, min_rise, after, decay
        self.ema: float | None = None
        self.best = math.inf

    def diverged(self, loss: float, step: int) -> bool:
        self.ema = loss if self.ema is None else self.decay * self.ema + (1 - self.decay) * loss
        self.best = min(self.best, self.ema)
        return (bool(self.factor) and step >= self.after and self.ema > self.factor * self.best
                and self.ema - self.best > self.min_rise)


class PendingLosses:
    """Each step's micro-batch losses (with their weights), kept on the device until a log line or a
    checkpoint needs them: reading them back every step would make the host wait for the device at
    every step, where a GPU's queue should run ahead. `settle` reads them in one transfer and checks
    the steps in order, so an error still names the step it happened at."""

    def __init__(self, name: str, guard: "DivergenceGuard"):
        self.name, self.guard = name, guard
        self.steps: list[tuple[int, list[tuple[torch.Tensor, float]]]] = []

    def add(self, step: int, parts: list[tuple[torch.Tensor, float]]) -> None:
        self.steps.append((step, parts))

    def settle(self) -> float | None:
        """The last pending step's loss (None if none is pending); raises at the first step whose
        loss is not finite or has diverged."""
        if not self.steps:
            return None
        values = iter(torch.stack([loss for _, parts in self.steps for loss, _ in parts]).tolist())
        for step, parts in self.steps:
            loss_sum = 0.0
            for _, weight in parts:
                loss_sum += next(values) * weight
            if not math.isfinite(loss_sum):
                raise HerdError(f"{self.name}: loss became {loss_sum} at step {step}; "
                                f"lower {self.name}.lr or check the input data")
            if self.guard.diverged(loss_sum, step):
                raise HerdError(f"{self.name}: diverged at step {step}: smoothed loss {self.guard.ema:.3f} is over "
                                f"{self.guard.factor}x its best {self.guard.best:.3f}; lower {self.name}.lr "
                                f"(runtime.train.divergence_factor and divergence_min_rise set the threshold)")
        self.steps.clear()
        return loss_sum


@contextmanager
def deferred_interrupts():
    """SIGINT/SIGTERM during training take effect between steps (the yielded list becomes true), so
    the stop can save a consistent checkpoint. Outside the main thread signals cannot be caught."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def measured_peak_flops() -> float:
    """The device's bf16 matmul throughput, measured once (MFU's denominator)."""
    global _PEAK
    if _PEAK is None:
        dev = distributed.device()
        n = 2048 if dev.type == "cpu" else 8192
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        a @ b
        distributed.synchronize()
        t, reps = time.time(), 0
        while time.time() - t < 0.5 or reps < 3:
            a @ b
            reps += 1
        distributed.synchronize()
        _PEAK = 2 * n**3 * reps / (time.time() - t)
    return _PEAK


_PEAK: float | None = None


@dataclass
class LocalRun:
    """The part of a stage run the training loop needs, for using it outside a pipeline stage
    (notebooks, benchmarks, tests): a name, the `train` params and their runtime knobs, a
    checkpoint folder and a metrics sink that keeps what was logged."""

    name: str
    folder: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: TrainRuntime = field(default_factory=TrainRuntime)
    logged: list = field(default_factory=list)
    tables: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return OmegaConf.create({"train": self.train, "runtime": {"train": self.runtime}})

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.folder)

    def checkpoint_dir(self) -> Path:
        return self.checkpoints.local()

    def log_step(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))


def finish(st) -> None:
    """Drop the resumable checkpoint once the stage's output is complete."""
    distributed.barrier()
    if distributed.is_main():
        st.checkpoints.clear()
