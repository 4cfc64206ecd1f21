"""pretrain: a Llama-style decoder (dense or mixture-of-experts) trained from scratch on the
filtered mix: warmup + cosine or WSD, sequence-length and batch-size ramps, gradient accumulation,
optional distillation from a teacher. Runs under torchrun (DDP) when runtime.train.nproc_per_node > 1."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from herd.config import ParamError, fraction, non_negative, positive
from herd.data.domains import check_weights
from herd.data.tokens import EOT, PAD, load_streams, load_tokenizer, special_id
from herd.errors import HerdError
from herd.model.llama import Llama, LlamaConfig, load_checkpoint
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training import distributed
from herd.training.config import TrainConfig, check_optimization
from herd.training.lm import MixStep, PretrainLoss, RampStep, unigram_entropy
from herd.training.lm_stage import save_model, train_lm
from herd.training.schedule import warmup_cosine, warmup_stable_decay


@dataclass
class ModelConfig:
    """Llama-style decoder: grouped-query attention, RMSNorm pre-norm, SwiGLU, RoPE."""

    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 2
    ffn_dim: int = 512
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    n_experts: int = 0  # 0: dense SwiGLU; 8 with experts_per_token 2 is Mixtral's mixture of experts
    experts_per_token: int = 2
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss

    def check(self, root) -> None:
        positive(self, "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_base", "norm_eps", "init_std")
        non_negative(self, "n_experts", "router_aux_loss_coef")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ParamError("n_heads", f"must divide model.dim ({self.dim}) into heads of an even size (RoPE)")
        if self.n_heads % self.n_kv_heads:
            raise ParamError("n_kv_heads", f"must divide model.n_heads ({self.n_heads}) (grouped-query attention)")
        if self.n_experts and (self.n_experts < 2 or not 1 <= self.experts_per_token <= self.n_experts):
            raise ParamError("n_experts", "a mixture needs at least 2 experts and at least experts_per_token of them")


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher with the same tokenizer (AFM, Gemma 2)."""

    teacher: str = ""  # a checkpoint folder, e.g. a previous Herd run's artifacts/anneal/model; "" = off
    mode: str = "top1"  # top1: AFM's weight x teacher top-1 + (1 - weight) x label; kl: Gemma 2's distribution
    weight: float = 0.9
    temperature: float = 1.0


@dataclass
class PretrainConfig:
    seq_len: int = 256  # final sequence length
    batch_size: int = 16  # final sequences per optimizer step
    micro_batch_size: int = 16  # sequences per forward pass; batch_size / micro = gradient accumulation
    steps: int = 400
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine, or wsd (warmup-stable-decay)
    decay_frac: float = 0.2  # wsd: share of the steps spent decaying
    seq_len_ramp: list[RampStep] = field(default_factory=lambda: [RampStep(300_000, 128)])
    batch_ramp: list[RampStep] = field(default_factory=lambda: [RampStep(150_000, 8)])
    mix_schedule: list[MixStep] = field(default_factory=list)
    distill: DistillConfig = field(default_factory=DistillConfig)
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def check(self, root: Path) -> None:
        check_optimization(self)
        positive(self, "micro_batch_size")
        fraction(self, "decay_frac")
        if self.schedule not in ("cosine", "wsd"):
            raise ParamError("schedule", f"'{self.schedule}' is not cosine or wsd")
        if self.batch_size % self.micro_batch_size:
            raise ParamError("batch_size", "must be a multiple of pretrain.micro_batch_size")
        for i, step in enumerate(self.batch_ramp):
            if not 0 < step.value <= self.batch_size or step.value % min(step.value, self.micro_batch_size):
                raise ParamError(f"batch_ramp[{i}].value", "must be at most pretrain.batch_size and a multiple of "
                                 "pretrain.micro_batch_size (or smaller than it)")
        for i, step in enumerate(self.seq_len_ramp):
            if not 0 < step.value <= self.seq_len:
                raise ParamError(f"seq_len_ramp[{i}].value", "must be between 1 and pretrain.seq_len")
        for i, step in enumerate(self.mix_schedule):
            check_weights(step.weights, f"mix_schedule[{i}].weights")
        fraction(self.distill, "weight", within="distill.")
        positive(self.distill, "temperature", within="distill.")
        if self.distill.mode not in ("top1", "kl"):
            raise ParamError("distill.mode", f"'{self.distill.mode}' is not top1 or kl")
        if self.distill.teacher and not (root / self.distill.teacher / "config.json").is_file():
            raise ParamError("distill.teacher", f"no checkpoint (config.json) in {root / self.distill.teacher}")


def build_model(m, vocab_size: int, max_seq_len: int, eot_id: int, pad_id: int, seed: int) -> Llama:
    model = Llama(LlamaConfig(
        vocab_size=vocab_size, dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
        ffn_dim=m.ffn_dim, rope_base=m.rope_base, norm_eps=m.norm_eps, tie_embeddings=m.tie_embeddings,
        max_seq_len=max_seq_len, eot_id=eot_id, pad_id=pad_id, n_experts=m.n_experts,
        experts_per_token=m.experts_per_token,
    ))
    model.init_weights(m.init_std, torch.Generator().manual_seed(seed))
    return model


def load_teacher(distill, root: Path, vocab_size: int):
    if not distill.teacher:
        return None
    teacher = load_checkpoint(root / distill.teacher, head="lm").eval().to(distributed.device())
    if teacher.cfg.vocab_size != vocab_size:
        raise HerdError(f"pretrain.distill.teacher has a vocabulary of {teacher.cfg.vocab_size} tokens, the "
                        f"student's tokenizer {vocab_size}: distillation needs the same tokenizer")
    return teacher.requires_grad_(False)


SPEC = StageSpec(__doc__, inputs=("tokenizer",), params={"seed": int, "model": ModelConfig, "train": TrainConfig,
                                                         "pretrain": PretrainConfig}, distributed=True,
                 plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    cfg, m = st.cfg.pretrain, st.cfg.model
    tokens = st.input("tokenizer")
    tok = load_tokenizer(tokens)
    model = build_model(m, tok.get_vocab_size(), cfg.seq_len, special_id(tok, EOT), special_id(tok, PAD),
                        st.seed)
    # The filter already mixed the corpus to its target weights: sample domains by their size.
    weights = {d: float(len(s)) for d, s in load_streams(tokens, "train").items()}
    if cfg.schedule == "wsd":
        lr_at = lambda s: warmup_stable_decay(s, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio,  # noqa: E731
                                              cfg.decay_frac)
    else:
        lr_at = lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio)  # noqa: E731
    loss_fn = PretrainLoss(m.router_aux_loss_coef if m.n_experts else 0.0,
                           load_teacher(cfg.distill, st.root, tok.get_vocab_size()),
                           cfg.distill.mode, cfg.distill.weight, cfg.distill.temperature)
    st.metrics.update(train_lm(
        st, model, tokens, section=cfg, weights=weights, eval_seq_lens=[cfg.seq_len], lr_at=lr_at,
        loss_fn=loss_fn, micro_batch_size=cfg.micro_batch_size, seq_len_ramp=cfg.seq_len_ramp,
        batch_ramp=cfg.batch_ramp, mix_schedule=cfg.mix_schedule,
    ))
    st.metrics["params"] = model.num_params()
    st.metrics["unigram_entropy"] = round(unigram_entropy(load_streams(tokens, "validation")), 4)
    save_model(st, model, tokens)


if __name__ == "__main__":
    main(SPEC, run)
