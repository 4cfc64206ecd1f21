"""sft: supervised fine-tuning of the current policy (the annealed base in round 1) on the best
rejection samples, in the chat format: loss on response tokens only, conversations packed into
rows; optionally LoRA or DoRA adapters, merged into the weights on save."""

from dataclasses import dataclass, field

import torch

from herd.config import check_part
from herd.data.io import read_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.llama import load_checkpoint
from herd.model.lora import LoraConfig, apply_lora, count_params, merge_lora
from herd.post.chat import ChatFormat, seed_chat_tokens
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.distributed import device, to_device
from herd.training.lm import lm_loss
from herd.training.lm_stage import save_model
from herd.training.loop import train
from herd.training.precision import autocast
from herd.training.schedule import warmup_cosine


@dataclass
class SFTConfig:
    seq_len: int = 256  # packed rows
    batch_size: int = 16  # conversations per step
    steps: int = 200
    lr: float = 3e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: LoraConfig = field(default_factory=LoraConfig)

    def check(self, root) -> None:
        check_optimization(self)
        check_part(self.lora, root, "lora.")


SPEC = StageSpec(__doc__, inputs=("base", "samples"), params={"seed": int, "train": TrainConfig, "sft": SFTConfig},
                 plots=CURVE_PLOTS, model="policy")


def run(st: StageRun) -> None:
    cfg = st.cfg.sft
    base = st.input("base") / "model"
    fmt = ChatFormat(load_tokenizer(base))
    examples = [(fmt.prompt(r["prompt"]), fmt.response(r["best"]))
                for r in read_jsonl(st.input("samples") / "samples.jsonl") if r["accepted"]]
    if not examples:
        raise HerdError("sft has no examples: no rejection sample was accepted (none verified right)")
    model = load_checkpoint(base)
    if st.upstream_manifest("base").get("model_kind") != "policy":  # a base model has never seen the chat tokens
        seed_chat_tokens(model, fmt)
    model = apply_lora(model, cfg.lora)

    def batch_at(step: int) -> dict:
        g = torch.Generator().manual_seed(st.seed * 104729 + step)
        idx = torch.randint(0, len(examples), (cfg.batch_size,), generator=g).tolist()
        return [fmt.packed([examples[i] for i in idx], cfg.seq_len)]

    def response_loss() -> float:  # before training the model is on the CPU, after it on the device
        batch = to_device(fmt.packed(examples[:64], cfg.seq_len))
        with torch.no_grad(), autocast(st.cfg.train.precision):
            return round(lm_loss(model.to(device()), batch)[0].item(), 4)

    before = response_loss()
    st.metrics.update(train(
        st, model, steps=cfg.steps, batch_at=batch_at, loss_fn=lm_loss,
        lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        key=st.run_key(),
    ))
    trainable, total = count_params(model)
    st.metrics.update({"examples": len(examples), "response_loss_before": before,
                       "response_loss_after": response_loss(), "trainable_params": trainable, "params": total})
    save_model(st, merge_lora(model), base)


if __name__ == "__main__":
    main(SPEC, run)
