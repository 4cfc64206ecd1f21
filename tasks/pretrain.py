"""pretrain: a Llama-style decoder (dense or mixture-of-experts) trained from scratch on the
filtered mix: warmup + cosine or WSD, sequence-length and batch-size ramps, gradient accumulation,
optional distillation from a teacher. Runs under torchrun (DDP) when train.nproc_per_node > 1."""

from pathlib import Path

import torch

from herd import distributed
from herd.errors import HerdError
from herd.lm import PretrainLoss, unigram_entropy
from herd.lm_stage import save_model, train_lm
from herd.model import Llama, LlamaConfig, load_checkpoint
from herd.schedule import warmup_cosine, warmup_stable_decay
from herd.stage import main, stage_run
from herd.tokens import EOT, PAD, load_streams, load_tokenizer, special_id


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


def run() -> None:
    with stage_run("pretrain", inputs=["tokenizer"]) as st:
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
    main(run, distributed_ok=True)
