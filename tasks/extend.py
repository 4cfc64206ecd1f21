"""extend: context lengthening in steps (Llama 3.1, Qwen 2, AFM). Each step continues pretraining at
a longer sequence length with a raised RoPE base (optionally scaled), on long documents, generated
long-context tasks (passkey, key-value, multi-needle, quoted-passage QA) and a replay of the
original mix, with the learning rate re-warmed and re-decayed. After each step a gate checks
retrieval at its length and that short-context loss stayed within a tolerance of the
pre-extension model's; a step that fails is repeated, up to a budget (Llama 3.1's criterion)."""

from herd.data.long_tasks import TaskMaker, haystack
from herd.data.tokens import load_streams, load_tokenizer
from herd.model.llama import load_checkpoint
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig
from herd.training.extend import ExtendConfig, apply_rope, gate, optimizer_steps, sampler
from herd.training.lm import PretrainLoss
from herd.training.lm_stage import eval_losses, flops_per_token, save_model
from herd.training.loop import train
from herd.training.schedule import warmup_cosine

SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"),
                 params={"seed": int, "train": TrainConfig, "extend": ExtendConfig},
                 plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    cfg, tokens = st.cfg.extend, st.input("tokenizer")
    model = load_checkpoint(st.input("base") / "model")
    pretrained = model.cfg.max_seq_len  # the context it was trained at
    train_streams, val = load_streams(tokens, "train"), load_streams(tokens, "validation")
    tok = load_tokenizer(tokens)
    tasks, held_out_tasks = TaskMaker(tok, haystack(train_streams)), TaskMaker(tok, haystack(val))
    short_before = eval_losses(st, model, val, pretrained)["mean"]
    curve = []
    for i, step in enumerate(cfg.steps):
        apply_rope(model, step, pretrained)
        for attempt in range(cfg.gate.max_repeats + 1):
            phase = f"step{i}" + (f"_repeat{attempt}" if attempt else "")
            n = optimizer_steps(cfg, step)
            result = train(
                st, model, steps=n, phase=phase, key=f"{st.run_key()}:{phase}", loss_fn=PretrainLoss(),
                batch_at=sampler(cfg, step, phase, train_streams, tasks, st.seed, model.cfg.eot_id),
                lr_at=lambda s, n=n: warmup_cosine(s, n, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio),
                weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                flops_per_token=flops_per_token(model, step.seq_len),
            )
            offset = curve[-1]["step"] + 1 if curve else 0
            curve += [{**row, "step": row["step"] + offset} for row in st.tables["curve"]]
            st.metrics.update({f"step{i}_{k}": v for k, v in result.items()})
            st.metrics[f"gate_{i}_repeats"] = attempt
            if gate(st, model, held_out_tasks, step, i, short_before, val, pretrained):
                break
    st.tables["curve"] = curve
    st.metrics["final_loss"] = curve[-1]["loss"]
    for seq_len in (pretrained, cfg.steps[-1].seq_len):
        for domain, loss in eval_losses(st, model, val, seq_len).items():
            st.metrics[f"val_loss_{domain}_len{seq_len}"] = loss
    save_model(st, model, tokens)


if __name__ == "__main__":
    main(SPEC, run)
