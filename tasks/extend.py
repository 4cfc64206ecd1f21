"""extend: context lengthening. Continue pretraining at a longer sequence length with a raised
RoPE base, on long documents (the passkey documents and whole source files) plus a replay of the
original mix; the LR is re-warmed and re-decayed."""

from dataclasses import dataclass, field

from herd.config import fraction, positive
from herd.data.domains import check_weights
from herd.data.tokens import load_streams
from herd.model.llama import load_checkpoint
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.lm_stage import save_model, train_lm
from herd.training.schedule import warmup_cosine


@dataclass
class ExtendConfig:
    """Context lengthening: longer sequences, raised RoPE base, re-warmed and re-decayed LR."""

    seq_len: int = 1024
    rope_base: float = 100000.0
    batch_size: int = 4
    steps: int = 60
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    long_mix: dict[str, float] = field(default_factory=lambda: {"long": 0.6, "code": 0.4})  # long documents
    replay_frac: float = 0.05  # share of the original short-context mix (continued-pretraining replay)

    def check(self, root) -> None:
        check_optimization(self)
        positive(self, "rope_base")
        fraction(self, "replay_frac")
        check_weights(self.long_mix, "long_mix")


SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"),
                 params={"seed": int, "train": TrainConfig, "extend": ExtendConfig},
                 headline=("final_loss",), plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    cfg = st.cfg.extend
    tokens = st.input("tokenizer")
    short = load_checkpoint(st.input("base") / "model").cfg.max_seq_len  # the context it was trained at
    model = load_checkpoint(st.input("base") / "model", rope_base=cfg.rope_base, max_seq_len=cfg.seq_len)
    sizes = {d: float(len(s)) for d, s in load_streams(tokens, "train").items()}
    # Long documents (to long_mix), plus replay_frac of the original mix (by size) so
    # short-context skill is kept.
    long_total = sum(cfg.long_mix.values())
    weights = {d: cfg.replay_frac * v / sum(sizes.values()) for d, v in sizes.items()}
    for domain, w in cfg.long_mix.items():
        weights[domain] = weights.get(domain, 0.0) + (1 - cfg.replay_frac) * w / long_total
    st.metrics.update(train_lm(
        st, model, tokens, section=cfg, weights=weights,
        eval_seq_lens=[short, cfg.seq_len],
        lr_at=lambda step: warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio),
    ))
    save_model(st, model, tokens)


if __name__ == "__main__":
    main(SPEC, run)
