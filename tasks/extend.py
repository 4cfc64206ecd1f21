"""extend: context lengthening. Continue pretraining at a longer sequence length with a raised
RoPE base, on long documents (the passkey documents and whole source files) plus a replay of the
original mix; the LR is re-warmed and re-decayed."""

from herd.lm_stage import save_model, train_lm
from herd.model import load_checkpoint
from herd.schedule import warmup_cosine
from herd.stage import main, stage_run
from herd.tokens import load_streams


def run() -> None:
    with stage_run("extend", inputs=["pretrain", "tokenizer"]) as st:
        cfg = st.cfg.extend
        tokens = st.input("tokenizer")
        model = load_checkpoint(st.input("pretrain") / "model", rope_base=cfg.rope_base, max_seq_len=cfg.seq_len)
        sizes = {d: float(len(s)) for d, s in load_streams(tokens, "train").items()}
        # Long documents (to long_mix), plus replay_frac of the original mix (by size) so
        # short-context skill is kept.
        long_total = sum(cfg.long_mix.values())
        weights = {d: cfg.replay_frac * v / sum(sizes.values()) for d, v in sizes.items()}
        for domain, w in cfg.long_mix.items():
            weights[domain] = weights.get(domain, 0.0) + (1 - cfg.replay_frac) * w / long_total
        st.metrics.update(train_lm(
            st, model, tokens, section=cfg, weights=weights,
            eval_seq_lens=[st.upstream_manifest("pretrain")["params"]["pretrain"]["seq_len"], cfg.seq_len],
            lr_at=lambda step: warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio),
        ))
        save_model(st, model, tokens)


if __name__ == "__main__":
    main(run)
