"""pretrain: a Llama-style decoder trained from scratch on the filtered mix, warmup + cosine."""

import torch

from herd.lm import unigram_entropy
from herd.lm_stage import save_model, train_lm
from herd.model import Llama, LlamaConfig
from herd.schedule import warmup_cosine
from herd.stage import main, stage_run
from herd.tokens import EOT, PAD, load_streams, load_tokenizer, special_id


def run() -> None:
    with stage_run("pretrain", inputs=["tokenizer"]) as st:
        cfg, m = st.cfg.pretrain, st.cfg.model
        tokens = st.input("tokenizer")
        tok = load_tokenizer(tokens)
        model = Llama(LlamaConfig(
            vocab_size=tok.get_vocab_size(), dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
            n_kv_heads=m.n_kv_heads, ffn_dim=m.ffn_dim, rope_base=m.rope_base, norm_eps=m.norm_eps,
            tie_embeddings=m.tie_embeddings, max_seq_len=cfg.seq_len,
            eot_id=special_id(tok, EOT), pad_id=special_id(tok, PAD),
        ))
        model.init_weights(m.init_std, torch.Generator().manual_seed(st.seed))
        # The filter already mixed the corpus to its target weights: sample domains by their size.
        weights = {d: float(len(s)) for d, s in load_streams(tokens, "train").items()}
        st.metrics.update(train_lm(
            st, model, tokens, section=cfg, weights=weights, eval_seq_lens=[cfg.seq_len],
            lr_at=lambda step: warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio),
        ))
        st.metrics["params"] = model.num_params()
        st.metrics["unigram_entropy"] = round(unigram_entropy(load_streams(tokens, "validation")), 4)
        save_model(st, model, tokens)


if __name__ == "__main__":
    main(run)
