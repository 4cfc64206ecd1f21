"""reward: a Bradley-Terry reward model started from the annealed base (scalar head), trained on
verifiable preference pairs; one model for every criterion, as Llama 3."""

from dataclasses import dataclass

import torch

from herd.config import ParamError, positive
from herd.data.io import in_holdout, read_table, write_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.export import export_model
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.losses import bradley_terry_loss, rewards
from herd.post.preferences import math_problems, preference_pairs
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.loop import finish, train
from herd.training.precision import autocast
from herd.training.schedule import warmup_cosine


def pair_batch(fmt: ChatFormat, pairs: list[dict], seq_len: int) -> dict:
    """Chosen rows first, then rejected rows, in one padded batch."""
    rows = [(fmt.prompt(p["prompt"]), fmt.response(p[side])) for side in ("chosen", "rejected") for p in pairs]
    return fmt.conversations(rows, seq_len)


def bt_step(model, batch) -> tuple[torch.Tensor, dict]:
    r = rewards(model, batch)
    chosen, rejected = r.chunk(2)
    metrics = {"accuracy": (chosen > rejected).float().mean().item(), "tokens": int(batch["last"].sum()) + len(r)}
    return bradley_terry_loss(chosen, rejected), metrics


@torch.no_grad()
def pair_accuracy(model, fmt, pairs, seq_len, precision) -> float:
    correct = 0
    for i in range(0, len(pairs), 32):
        with autocast(precision):
            _, metrics = bt_step(model, pair_batch(fmt, pairs[i : i + 32], seq_len))
        correct += metrics["accuracy"] * len(pairs[i : i + 32])
    return round(correct / len(pairs), 4)


@dataclass
class RewardConfig:
    """Bradley-Terry reward model on verifiable preference pairs, started from the base."""

    pairs: int = 1500
    heldout_frac: float = 0.1  # pairs kept aside to measure reward accuracy
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 100
    lr: float = 5e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def check(self, root) -> None:
        check_optimization(self)
        positive(self, "pairs")
        if not 0 < self.heldout_frac < 1:
            raise ParamError("heldout_frac", f"must leave pairs to train on and to hold out (0 < frac < 1), got "
                             f"{self.heldout_frac}")


SPEC = StageSpec(__doc__, inputs=("base", "filtered"),
                 params={"seed": int, "train": TrainConfig, "reward": RewardConfig},
                 plots=CURVE_PLOTS,
                 model="reward", registers="reward_model")


def run(st: StageRun) -> None:
    cfg = st.cfg.reward
    base = st.input("base") / "model"
    fmt = ChatFormat(load_tokenizer(base))
    problems = math_problems(read_table(st.input("filtered") / "train"))
    if len(problems) < 10:
        raise HerdError(f"reward needs math problems with questions in the filtered corpus; found {len(problems)}")
    pairs = preference_pairs(problems, cfg.pairs, st.seed)
    held_out = [p for p in pairs if in_holdout(p["id"], cfg.heldout_frac)]
    train_pairs = [p for p in pairs if not in_holdout(p["id"], cfg.heldout_frac)]
    model = load_checkpoint(base, head="score")

    def batch_at(step: int) -> dict:
        g = torch.Generator().manual_seed(st.seed * 7919 + step)
        idx = torch.randint(0, len(train_pairs), (cfg.batch_size,), generator=g).tolist()
        return [pair_batch(fmt, [train_pairs[i] for i in idx], cfg.seq_len)]

    st.metrics.update(train(
        st, model, steps=cfg.steps, batch_at=batch_at, loss_fn=bt_step,
        lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        key=st.run_key(),
    ))
    st.metrics["heldout_accuracy"] = pair_accuracy(model, fmt, held_out, cfg.seq_len, st.cfg.train.precision)
    st.metrics["heldout_pairs"] = len(held_out)
    export_model(st, model, base, "reward")
    write_jsonl(held_out, st.out / "heldout_pairs.jsonl")
    finish(st)


if __name__ == "__main__":
    main(SPEC, run)
