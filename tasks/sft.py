"""sft: supervised fine-tuning of the annealed base on the best rejection samples, with the loss
on response tokens only."""

import torch

from herd.chat import ChatFormat
from herd.data import read_jsonl
from herd.errors import HerdError
from herd.lm import lm_loss
from herd.lm_stage import save_model
from herd.model import load_checkpoint
from herd.schedule import warmup_cosine
from herd.stage import main, stage_run
from herd.tokens import load_tokenizer
from herd.train import autocast, run_key, train


def run() -> None:
    with stage_run("sft", inputs=["anneal", "rejection_sample"]) as st:
        cfg = st.cfg.sft
        base = st.input("anneal") / "model"
        fmt = ChatFormat(load_tokenizer(base))
        examples = [(fmt.prompt(r["prompt"]), fmt.response(r["best"]))
                    for r in read_jsonl(st.input("rejection_sample") / "samples.jsonl")]
        if not examples:
            raise HerdError("sft has no examples: rejection_sample produced no samples")
        model = load_checkpoint(base)

        def batch_at(step: int) -> dict:
            g = torch.Generator().manual_seed(st.seed * 104729 + step)
            idx = torch.randint(0, len(examples), (cfg.batch_size,), generator=g).tolist()
            return [fmt.batch([examples[i] for i in idx], cfg.seq_len)]

        with torch.no_grad(), autocast(st.cfg.train.precision):
            before = lm_loss(model, fmt.batch(examples[:64], cfg.seq_len))[0].item()
        st.metrics.update(train(
            st, model, steps=cfg.steps, batch_at=batch_at, loss_fn=lm_loss,
            lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
            key=run_key(st.name, dict(st.cfg), st.input_hashes),
        ))
        with torch.no_grad(), autocast(st.cfg.train.precision):
            after = lm_loss(model, fmt.batch(examples[:64], cfg.seq_len))[0].item()
        st.metrics.update({"examples": len(examples), "response_loss_before": round(before, 4),
                           "response_loss_after": round(after, 4)})
        save_model(st, model, base)


if __name__ == "__main__":
    main(run)
