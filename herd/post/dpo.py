"""DPO training, shared by the dpo stage and its control: the config, on-policy and data-set
pairs, reference log-probabilities computed once per pair, and the optimization (DPO or IPO, an
optional NLL term on the chosen response, LoRA/DoRA, averaging with the previous round)."""

from dataclasses import dataclass, field

import torch

from herd.config import ParamError, check_part, non_negative, positive
from herd.data.io import read_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.cross_entropy import IGNORE
from herd.model.llama import load_checkpoint
from herd.model.lora import LoraConfig, apply_lora, merge_lora
from herd.post.chat import ChatFormat
from herd.post.losses import dpo_loss, response_lengths, sequence_logprobs
from herd.post.preference_data import PreferenceSource, check_sources, load_preferences
from herd.stage import StageRun
from herd.training.averaging import averaged
from herd.training.config import check_optimization
from herd.training.distributed import device, to_device
from herd.training.lm_stage import save_model
from herd.training.loop import train
from herd.training.precision import autocast
from herd.training.schedule import warmup_cosine

LOSSES = ("sigmoid", "ipo")
AVERAGES = ("none", "uniform", "ema")


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid: DPO; ipo: IPO on per-token mean log-probabilities
    nll_weight: float = 1.0  # + this times the chosen response's per-token NLL (Llama 3)
    datasets: list[PreferenceSource] = field(default_factory=list)  # preference data sets, beside on-policy pairs
    # From round 2: the saved policy is this round's averaged with the previous round's (uniform:
    # over all rounds so far; ema: ema_decay on the previous).
    average: str = "none"
    ema_decay: float = 0.5
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 200
    lr: float = 1e-5
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: LoraConfig = field(default_factory=LoraConfig)

    def check(self, root) -> None:
        check_optimization(self)
        positive(self, "beta")
        non_negative(self, "nll_weight")
        if self.loss not in LOSSES:
            raise ParamError("loss", f"must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.average not in AVERAGES:
            raise ParamError("average", f"must be one of {', '.join(AVERAGES)}, got '{self.average}'")
        if not 0 <= self.ema_decay < 1:
            raise ParamError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check_sources(self.datasets, root, "datasets")
        check_part(self.lora, root, "lora.")


def preference_pairs(st: StageRun, fmt: ChatFormat) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids: on-policy pairs, then the preference data sets'."""
    pairs = [(fmt.prompt(r["prompt"]), fmt.response(r["best"]), fmt.response(rejected))
             for r in read_jsonl(st.input("samples") / "samples.jsonl") for rejected in r["rejected"]]
    st.metrics["onpolicy_pairs"] = len(pairs)
    for source in st.cfg.dpo.datasets:
        rows, _ = load_preferences(source, st.root)
        pairs += [(fmt.render(r["messages"]), fmt.response(r["chosen"]), fmt.response(r["rejected"])) for r in rows]
    if not pairs:
        raise HerdError("dpo has no pairs: no prompt's best sample beat another, and no dataset is set")
    return pairs


def pair_batch(fmt: ChatFormat, pairs: list, seq_len: int) -> dict:
    """Chosen rows first, then rejected rows."""
    return fmt.batch([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs], seq_len)


@torch.no_grad()
def reference_logprobs(reference, fmt, pairs, seq_len: int, precision: str, per_token: bool) -> torch.Tensor:
    """(pairs, 2) log-probabilities of the chosen and rejected responses under the frozen
    reference, once for all pairs: the reference never changes, so no step recomputes them."""
    reference.to(device()).eval()
    out = []
    for i in range(0, len(pairs), 32):
        batch = to_device(pair_batch(fmt, pairs[i : i + 32], seq_len))
        with autocast(precision):
            logps = sequence_logprobs(reference, batch)
        if per_token:
            logps = logps / response_lengths(batch)
        out.append(torch.stack(logps.chunk(2), 1).cpu())
    return torch.cat(out)


def average_with_previous(st: StageRun, policy) -> None:
    """Average the new policy's weights with the previous round's final policy, in place."""
    cfg = st.cfg.dpo
    previous = st.upstream_manifest("previous")
    rounds = previous.get("averaged_rounds", 1)
    keep = rounds / (rounds + 1) if cfg.average == "uniform" else cfg.ema_decay
    old = load_checkpoint(st.input("previous") / "model").state_dict()
    averaged(policy, [policy.state_dict(), old], [1 - keep, keep])
    st.manifest["averaged_rounds"] = rounds + 1
    st.metrics["previous_weight"] = round(keep, 4)


def optimize(st: StageRun, preference: bool) -> None:
    """DPO of the round's SFT policy; without the preference term (its weight 0), the NLL term
    alone on the same pairs and steps: DPO's control."""
    cfg = st.cfg.dpo
    sft = st.input("policy") / "model"
    fmt = ChatFormat(load_tokenizer(sft))
    pairs = preference_pairs(st, fmt)
    per_token = cfg.loss == "ipo"
    ref = reference_logprobs(load_checkpoint(sft), fmt, pairs, cfg.seq_len, st.cfg.train.precision, per_token)
    policy = apply_lora(load_checkpoint(sft), cfg.lora)

    def batch_at(step: int) -> dict:
        g = torch.Generator().manual_seed(st.seed * 15485863 + step)
        idx = torch.randint(0, len(pairs), (cfg.batch_size,), generator=g)
        batch = pair_batch(fmt, [pairs[i] for i in idx.tolist()], cfg.seq_len)
        batch["ref_logps"] = ref[idx]
        return [batch]

    def step_loss(model, batch):
        logps = sequence_logprobs(model, batch)
        lengths = response_lengths(batch)
        pi_chosen, pi_rejected = (logps / lengths if per_token else logps).chunk(2)
        loss, metrics = dpo_loss(pi_chosen, pi_rejected, *batch["ref_logps"].unbind(1), cfg.beta, cfg.loss)
        loss = loss * float(preference)
        if cfg.nll_weight:
            nll = -(logps.chunk(2)[0] / lengths.chunk(2)[0]).mean()
            loss = loss + cfg.nll_weight * nll
            metrics["chosen_nll"] = nll.detach()
        return loss, {**metrics, "tokens": (batch["labels"] != IGNORE).sum()}

    st.metrics.update(train(
        st, policy, steps=cfg.steps, batch_at=batch_at, loss_fn=step_loss,
        lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        key=st.run_key(),
    ))
    policy = merge_lora(policy)
    if cfg.average != "none" and "previous" in st.inputs:
        average_with_previous(st, policy)
    st.metrics["pairs"] = len(pairs)
    save_model(st, policy, sft)

