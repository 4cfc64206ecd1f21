"""dpo: Direct Preference Optimization of the SFT policy, the SFT policy itself as the frozen
reference; pairs are the best vs the worst rejection sample by reward."""

import torch

from herd.chat import ChatFormat
from herd.data import read_jsonl
from herd.errors import HerdError
from herd.lm import IGNORE
from herd.lm_stage import save_model
from herd.losses import dpo_loss, sequence_logprobs
from herd.model import load_checkpoint
from herd.registry import register
from herd.schedule import warmup_cosine
from herd.stage import main, stage_run
from herd.tokens import load_tokenizer
from herd.train import run_key, train


def run() -> None:
    with stage_run("dpo", inputs=["sft", "rejection_sample"]) as st:
        cfg = st.cfg.dpo
        sft = st.input("sft") / "model"
        fmt = ChatFormat(load_tokenizer(sft))
        pairs = [(fmt.prompt(r["prompt"]), fmt.response(r["best"]), fmt.response(r["worst"]))
                 for r in read_jsonl(st.input("rejection_sample") / "samples.jsonl")
                 if r["best_score"] > r["worst_score"]]
        if not pairs:
            raise HerdError("dpo has no pairs: every prompt's best and worst samples scored the same")
        policy, reference = load_checkpoint(sft), load_checkpoint(sft).eval()
        reference.requires_grad_(False)

        def batch_at(step: int) -> dict:
            g = torch.Generator().manual_seed(st.seed * 15485863 + step)
            chosen = [pairs[i] for i in torch.randint(0, len(pairs), (cfg.batch_size,), generator=g).tolist()]
            batch = fmt.batch([(p, c) for p, c, _ in chosen] + [(p, r) for p, _, r in chosen], cfg.seq_len)
            with torch.no_grad():
                batch["ref_logps"] = sequence_logprobs(reference, batch)
            return [batch]

        def step_loss(model, batch):
            pi_chosen, pi_rejected = sequence_logprobs(model, batch).chunk(2)
            ref_chosen, ref_rejected = batch["ref_logps"].chunk(2)
            loss, metrics = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, cfg.beta)
            return loss, {**metrics, "tokens": int((batch["labels"] != IGNORE).sum())}

        st.metrics.update(train(
            st, policy, steps=cfg.steps, batch_at=batch_at, loss_fn=step_loss,
            lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
            key=run_key(st.name, dict(st.cfg), st.input_hashes),
        ))
        st.metrics["pairs"] = len(pairs)
        save_model(st, policy, sft)
        register(st, st.out / "model", "policy", st.cfg.tracking.policy_model)


if __name__ == "__main__":
    main(run)
