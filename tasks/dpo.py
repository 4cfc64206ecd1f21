"""dpo: Direct Preference Optimization of the SFT policy, the SFT policy itself as the frozen
reference; pairs are the best vs the worst rejection sample by reward."""

from dataclasses import dataclass

import torch

from herd.config import positive
from herd.data.io import read_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.cross_entropy import IGNORE
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.losses import dpo_loss, sequence_logprobs
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.lm_stage import save_model
from herd.training.loop import train
from herd.training.schedule import warmup_cosine


@dataclass
class DPOConfig:
    beta: float = 0.1
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 40
    lr: float = 1e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def check(self, root) -> None:
        check_optimization(self)
        positive(self, "beta")


SPEC = StageSpec(__doc__, inputs=("policy", "samples"), params={"seed": int, "train": TrainConfig, "dpo": DPOConfig},
                 plots=CURVE_PLOTS,
                 model="policy", registers="policy_model")


def run(st: StageRun) -> None:
    cfg = st.cfg.dpo
    sft = st.input("policy") / "model"
    fmt = ChatFormat(load_tokenizer(sft))
    pairs = [(fmt.prompt(r["prompt"]), fmt.response(r["best"]), fmt.response(r["worst"]))
             for r in read_jsonl(st.input("samples") / "samples.jsonl")
             if r["best_score"] > r["worst_score"]]
    if not pairs:
        raise HerdError("dpo has no pairs: every prompt's best and worst samples scored the same")
    policy, reference = load_checkpoint(sft), load_checkpoint(sft).eval()
    reference.requires_grad_(False)

    def batch_at(step: int) -> dict:
        g = torch.Generator().manual_seed(st.seed * 15485863 + step)
        chosen = [pairs[i] for i in torch.randint(0, len(pairs), (cfg.batch_size,), generator=g).tolist()]
        batch = fmt.batch([(p, c) for p, c, _ in chosen] + [(p, r) for p, _, r in chosen], cfg.seq_len)
        with torch.no_grad():
            batch["ref_logps"] = sequence_logprobs(reference, batch)
        return [batch]

    def step_loss(model, batch):
        pi_chosen, pi_rejected = sequence_logprobs(model, batch).chunk(2)
        ref_chosen, ref_rejected = batch["ref_logps"].chunk(2)
        loss, metrics = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, cfg.beta)
        return loss, {**metrics, "tokens": int((batch["labels"] != IGNORE).sum())}

    st.metrics.update(train(
        st, policy, steps=cfg.steps, batch_at=batch_at, loss_fn=step_loss,
        lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        key=st.run_key(),
    ))
    st.metrics["pairs"] = len(pairs)
    save_model(st, policy, sft)


if __name__ == "__main__":
    main(SPEC, run)
