"""anneal: a short run on a high-quality mix (math, code) with the learning rate decayed linearly
to zero; the base model is the average of the last checkpoints of that run."""

from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from herd.config import ParamError, positive
from herd.data.domains import check_weights
from herd.data.tokens import load_streams
from herd.model.llama import load_checkpoint
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.lm_stage import eval_losses, save_model, train_lm
from herd.training.schedule import linear_to_zero


@dataclass
class AnnealConfig:
    """A short run on a high-quality mix with the learning rate decayed linearly to zero."""

    seq_len: int = 512
    batch_size: int = 8
    steps: int = 80
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: {"math": 0.6, "code": 0.25, "prose": 0.15})
    average_last: int = 3  # average this many checkpoints from the end of the run
    average_every: int = 20

    def check(self, root) -> None:
        check_optimization(self)
        positive(self, "average_every")
        check_weights(self.mix, "mix")
        if self.average_last < 1 or (self.average_last - 1) * self.average_every > self.steps - 1:
            raise ParamError("average_last", f"must be at least 1, and fit {self.average_last} checkpoints "
                             f"{self.average_every} steps apart into {self.steps} steps")


SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"),
                 params={"seed": int, "train": TrainConfig, "anneal": AnnealConfig},
                 headline=("final_loss",), plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    cfg = st.cfg.anneal
    tokens = st.input("tokenizer")
    model = load_checkpoint(st.input("base") / "model")
    snapshots = st.checkpoint_dir() / "snapshots"
    snapshots.mkdir(exist_ok=True)
    keep = {cfg.steps - 1 - i * cfg.average_every for i in range(cfg.average_last)}

    def snapshot(step: int, model) -> None:
        # Kept on disk, not in memory, so a resumed run averages the same checkpoints.
        if step in keep:
            tied = model.cfg.tie_embeddings
            state = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if not (tied and k == "lm_head.weight")}
            save_file(state, str(snapshots / f"step_{step}.safetensors"))

    st.metrics.update(train_lm(
        st, model, tokens, section=cfg, weights=dict(cfg.mix), eval_seq_lens=[cfg.seq_len],
        lr_at=lambda step: linear_to_zero(step, cfg.steps, cfg.lr), on_step_end=snapshot,
    ))
    files = sorted(snapshots.glob("step_*.safetensors"))
    states = [load_file(str(f)) for f in files]
    averaged = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
    model.load_state_dict(averaged, strict=False)
    st.metrics["averaged_checkpoints"] = len(states)
    for domain, loss in eval_losses(st, model, load_streams(tokens, "validation"), cfg.seq_len).items():
        st.metrics[f"val_loss_{domain}_len{cfg.seq_len}_averaged"] = loss
    save_model(st, model, tokens)


if __name__ == "__main__":
    main(SPEC, run)
