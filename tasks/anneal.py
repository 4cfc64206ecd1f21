"""anneal: a short run on a high-quality mix (math, code) with the learning rate decayed linearly
to zero; the base model is the average of the last checkpoints of that run."""

import torch
from safetensors.torch import load_file, save_file

from herd.lm_stage import eval_losses, save_model, train_lm
from herd.model import load_checkpoint
from herd.schedule import linear_to_zero
from herd.stage import main, stage_run
from herd.tokens import load_streams


def run() -> None:
    with stage_run("anneal", inputs=["extend", "tokenizer"]) as st:
        cfg = st.cfg.anneal
        tokens = st.input("tokenizer")
        model = load_checkpoint(st.input("extend") / "model")
        snapshots = st.checkpoint_dir() / "snapshots"
        snapshots.mkdir(exist_ok=True)
        keep = {cfg.steps - 1 - i * cfg.average_every for i in range(cfg.average_last)}

        def snapshot(step: int, model) -> None:
            # Kept on disk, not in memory, so a resumed run averages the same checkpoints.
            if step in keep:
                tied = model.cfg.tie_embeddings
                state = {k: v.detach().clone() for k, v in model.state_dict().items()
                         if not (tied and k == "lm_head.weight")}
                save_file(state, str(snapshots / f"step_{step}.safetensors"))

        st.metrics.update(train_lm(
            st, model, tokens, section=cfg, weights=dict(cfg.mix), eval_seq_lens=[cfg.seq_len],
            lr_at=lambda step: linear_to_zero(step, cfg.steps, cfg.lr), on_step_end=snapshot,
        ))
        files = sorted(snapshots.glob("step_*.safetensors"))
        states = [load_file(str(f)) for f in files]
        averaged = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
        model.load_state_dict(averaged, strict=False)
        st.metrics["averaged_checkpoints"] = len(states)
        for domain, loss in eval_losses(st, model, load_streams(tokens, "validation"), cfg.seq_len).items():
            st.metrics[f"val_loss_{domain}_len{cfg.seq_len}_averaged"] = loss
        save_model(st, model, tokens)


if __name__ == "__main__":
    main(run)
