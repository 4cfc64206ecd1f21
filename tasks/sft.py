"""sft: supervised fine-tuning of the annealed base on the best rejection samples, with the loss
on response tokens only."""

from dataclasses import dataclass

import torch

from herd.data.io import read_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.lm import lm_loss
from herd.training.lm_stage import save_model
from herd.training.loop import train
from herd.training.precision import autocast
from herd.training.schedule import warmup_cosine


@dataclass
class SFTConfig:
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 60
    lr: float = 3e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def check(self, root) -> None:
        check_optimization(self)


SPEC = StageSpec(__doc__, inputs=("base", "samples"), params={"seed": int, "train": TrainConfig, "sft": SFTConfig},
                 plots=CURVE_PLOTS, model="policy")


def run(st: StageRun) -> None:
    cfg = st.cfg.sft
    base = st.input("base") / "model"
    fmt = ChatFormat(load_tokenizer(base))
    examples = [(fmt.prompt(r["prompt"]), fmt.response(r["best"]))
                for r in read_jsonl(st.input("samples") / "samples.jsonl")]
    if not examples:
        raise HerdError("sft has no examples: rejection_sample produced no samples")
    model = load_checkpoint(base)

    def batch_at(step: int) -> dict:
        g = torch.Generator().manual_seed(st.seed * 104729 + step)
        idx = torch.randint(0, len(examples), (cfg.batch_size,), generator=g).tolist()
        return [fmt.batch([examples[i] for i in idx], cfg.seq_len)]

    with torch.no_grad(), autocast(st.cfg.train.precision):
        before = lm_loss(model, fmt.batch(examples[:64], cfg.seq_len))[0].item()
    st.metrics.update(train(
        st, model, steps=cfg.steps, batch_at=batch_at, loss_fn=lm_loss,
        lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        key=st.run_key(),
    ))
    with torch.no_grad(), autocast(st.cfg.train.precision):
        after = lm_loss(model, fmt.batch(examples[:64], cfg.seq_len))[0].item()
    st.metrics.update({"examples": len(examples), "response_loss_before": round(before, 4),
                       "response_loss_after": round(after, 4)})
    save_model(st, model, base)


if __name__ == "__main__":
    main(SPEC, run)
