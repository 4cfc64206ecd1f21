"""Pretraining throughput: Herd's loop vs Hugging Face `Trainer` with `LlamaForCausalLM`.

The same architecture (params.yaml's `model` section), the same batches, bf16 autocast, AdamW,
warmup + cosine and gradient clipping on both sides, one after the other in one process. Reports
tokens/s, MFU against the device's measured bf16 matmul peak, and the ratio of the medians over
alternating rounds, each side eager and under torch.compile (`ratio` is eager vs eager,
`ratio_compiled` compiled vs compiled); the last line printed is one JSON object.

    python benchmarks/pretrain.py [--steps 40] [--warmup 5] [--rounds 3]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from herd.model.llama import Llama, LlamaConfig
from herd.recipe import check_params
from herd.runtime.config import TrainRuntime
from herd.training.lm import PretrainLoss
from herd.training.lm_stage import flops_per_token
from herd.training.loop import LocalRun, measured_peak_flops, train
from herd.training.schedule import warmup_cosine

ROOT = Path(__file__).resolve().parents[1]


def batches(vocab: int, steps: int, batch: int, seq_len: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq_len + 1), generator=g) for _ in range(steps)]


def herd_run(cfg: LlamaConfig, data, lr: float, warmup: int, skip: int, compile: bool) -> float:
    model = Llama(cfg)
    model.init_weights(0.02, torch.Generator().manual_seed(0))
    times = []

    def batch_at(step: int):
        times.append(time.perf_counter())
        window = data[step]
        return [{"input_ids": window[:, :-1], "labels": window[:, 1:]}]

    with tempfile.TemporaryDirectory() as tmp:
        run = LocalRun("bench", Path(tmp), runtime=TrainRuntime(checkpoint_every=10**9, log_every=10**9,
                                                                compile=compile))
        train(run, model, steps=len(data), lr_at=lambda s: warmup_cosine(s, len(data), warmup, lr, 0.1),
              batch_at=batch_at, loss_fn=PretrainLoss(), weight_decay=0.1, grad_clip=1.0, key="bench")
    times.append(time.perf_counter())
    tokens = data[0][:, :-1].numel() * (len(data) - skip)
    return tokens / (times[-1] - times[skip])


def hf_trainer_run(cfg: LlamaConfig, data, lr: float, warmup: int, skip: int, compile: bool) -> float:
    import transformers
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    hf_cfg = cfg.to_hf("LlamaForCausalLM")
    hf_cfg.pop("herd")
    model = LlamaForCausalLM(HFConfig(**hf_cfg))
    rows = [{"input_ids": w[:, :-1][i], "labels": w[:, :-1][i]} for w in data for i in range(len(w))]
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=len(data[0]), max_steps=len(data), learning_rate=lr,
            warmup_steps=warmup, lr_scheduler_type="cosine", weight_decay=0.1, max_grad_norm=1.0, bf16=True,
            use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", logging_strategy="no",
            dataloader_num_workers=0, disable_tqdm=True, seed=0, torch_compile=compile,
        )
        transformers.logging.set_verbosity_error()
        Trainer(model=model, args=args, train_dataset=rows, callbacks=[Clock()]).train()
    tokens = data[0][:, :-1].numel() * (len(data) - skip)
    return tokens / (times[-1] - times[skip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps excluded from the timing")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating Herd / HF rounds, medians reported: a shared machine's speed drifts")
    args = parser.parse_args()
    params = check_params(ROOT)
    m, pre = params.model, params.pretrain
    cfg = LlamaConfig(vocab_size=params.tokenizer.vocab_size, dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
                      n_kv_heads=m.n_kv_heads, ffn_dim=m.ffn_dim, rope_base=m.rope_base, norm_eps=m.norm_eps,
                      tie_embeddings=m.tie_embeddings, max_seq_len=pre.seq_len)
    data = batches(cfg.vocab_size, args.steps, pre.batch_size, pre.seq_len)
    peak = measured_peak_flops()
    fpt = flops_per_token(Llama(cfg), pre.seq_len)
    # Each side as it runs by default (eager) and with torch.compile; the skipped warmup steps
    # absorb the compilation.
    sides = {"herd": herd_run, "hf_trainer": hf_trainer_run}
    tps = {f"{side}{suffix}": [] for side in sides for suffix in ("", "_compiled")}
    for r in range(args.rounds):
        for side, run in sides.items():
            for compiled in (False, True):
                tps[side + ("_compiled" if compiled else "")].append(
                    run(cfg, data, pre.lr, pre.warmup_steps, args.warmup, compiled))
        print(f"round {r + 1}: " + "   ".join(f"{k} {v[-1]:.0f} tokens/s" for k, v in tps.items()), flush=True)
    med = {k: statistics.median(v) for k, v in tps.items()}
    for k, v in med.items():
        print(f"{k:20s} {v:9.0f} tokens/s  MFU {v * fpt / peak:.3f}")
    print(json.dumps({
        "benchmark": "pretrain", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "params": Llama(cfg).num_params(),
        "batch": pre.batch_size, "seq_len": pre.seq_len, "steps_timed": args.steps - args.warmup,
        "rounds": args.rounds, "peak_bf16_flops": round(peak),
        **{f"{k}_tokens_per_s": round(v, 1) for k, v in med.items()},
        **{f"{k}_mfu": round(v * fpt / peak, 4) for k, v in med.items()},
        "ratio": round(med["herd"] / med["hf_trainer"], 3),
        "ratio_compiled": round(med["herd_compiled"] / med["hf_trainer_compiled"], 3),
        "round_ratios": [round(a / b, 3) for a, b in zip(tps["herd"], tps["hf_trainer"], strict=True)],
    }))


if __name__ == "__main__":
    main()
