"""What pretrain, extend and anneal share: load streams, train a causal LM on a window mix,
report per-domain held-out loss, save the model folder with its tokenizer."""

import math
from pathlib import Path

from herd.data.tokens import load_streams
from herd.model.export import export_model
from herd.training.lm import PretrainLoss, WindowSampler, domain_losses
from herd.training.loop import finish, train


def eval_losses(st, model, streams, seq_len: int) -> dict[str, float]:
    losses = domain_losses(model, streams, seq_len, st.cfg.train.eval_batches, st.cfg.train.precision)
    losses["mean"] = round(sum(losses.values()) / len(losses), 4)
    return losses


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x the parameters a token passes through (the embedding lookup
    excluded, the output projection included; for a mixture only the active experts), plus
    attention's 12 x layers x dim x context (PaLM's accounting)."""
    cfg = model.cfg
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "experts" not in n)
    if cfg.n_experts:
        expert = 3 * cfg.dim * cfg.ffn_dim
        params += cfg.n_layers * cfg.experts_per_token * expert
    params += cfg.vocab_size * cfg.dim if cfg.tie_embeddings else 0  # the tied output projection
    return 6 * params + 12 * cfg.n_layers * cfg.dim * seq_len


def train_lm(st, model, tokens_dir: Path, *, section, weights: dict[str, float], lr_at, eval_seq_lens,
             on_step_end=None, loss_fn=None, **sampler_options) -> dict:
    """Train `model` on windows of `section.seq_len` drawn to `weights`; returns the metrics."""
    train_streams, val_streams = load_streams(tokens_dir, "train"), load_streams(tokens_dir, "validation")
    sampler = WindowSampler(train_streams, weights, section.seq_len, section.batch_size, st.seed,
                            steps=section.steps, eot_id=model.cfg.eot_id, **sampler_options)
    result = train(
        st, model, steps=section.steps, lr_at=lr_at, batch_at=sampler, loss_fn=loss_fn or PretrainLoss(),
        weight_decay=section.weight_decay, grad_clip=section.grad_clip, key=st.run_key(),
        eval_fn=lambda: eval_losses(st, model, val_streams, section.seq_len), on_step_end=on_step_end,
        flops_per_token=flops_per_token(model, section.seq_len),
    )
    metrics = dict(result)
    for seq_len in eval_seq_lens:
        for domain, loss in eval_losses(st, model, val_streams, seq_len).items():
            metrics[f"val_loss_{domain}_len{seq_len}"] = loss
        metrics[f"val_ppl_len{seq_len}"] = round(math.exp(metrics[f"val_loss_mean_len{seq_len}"]), 3)
    return metrics


def save_model(st, model, tokens_dir: Path) -> None:
    """The model in the Hugging Face layout (herd/model/export.py), with the tokenizer of `tokens_dir`,
    as the kind of model its stage declares (base or policy)."""
    export_model(st, model, tokens_dir, st.model_kind)
    finish(st)
