"""Pretraining throughput: Herd's loop vs Hugging Face `Trainer` with `LlamaForCausalLM`.

The same architecture (params.yaml's `model` section), the same batches, bf16 autocast, AdamW,
warmup + cosine and gradient clipping on both sides, one after the other in one process. Reports
tokens/s, MFU against the device's measured bf16 matmul peak, and the ratio of the medians over
alternating rounds; the last line printed is one JSON object.

    python benchmarks/pretrain.py [--steps 40] [--warmup 5] [--rounds 3]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from herd.config import TrainConfig, load_params
from herd.lm import PretrainLoss
from herd.lm_stage import flops_per_token
from herd.model import Llama, LlamaConfig
from herd.schedule import warmup_cosine
from herd.train import LocalRun, measured_peak_flops, train

ROOT = Path(__file__).resolve().parents[1]


def batches(vocab: int, steps: int, batch: int, seq_len: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq_len + 1), generator=g) for _ in range(steps)]


def herd_run(cfg: LlamaConfig, data, lr: float, warmup: int, skip: int) -> float:
    model = Llama(cfg)
    model.init_weights(0.02, torch.Generator().manual_seed(0))
    times = []

    def batch_at(step: int):
        times.append(time.perf_counter())
        window = data[step]
        return [{"input_ids": window[:, :-1], "labels": window[:, 1:]}]

    with tempfile.TemporaryDirectory() as tmp:
        run = LocalRun("bench", Path(tmp), TrainConfig(checkpoint_every=10**9, log_every=10**9))
        train(run, model, steps=len(data), lr_at=lambda s: warmup_cosine(s, len(data), warmup, lr, 0.1),
              batch_at=batch_at, loss_fn=PretrainLoss(), weight_decay=0.1, grad_clip=1.0, key="bench")
    times.append(time.perf_counter())
    tokens = data[0][:, :-1].numel() * (len(data) - skip)
    return tokens / (times[-1] - times[skip])


def hf_trainer_run(cfg: LlamaConfig, data, lr: float, warmup: int, skip: int) -> float:
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
            dataloader_num_workers=0, disable_tqdm=True, seed=0,
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
    params = load_params(ROOT / "params.yaml")
    m, pre = params.model, params.pretrain
    cfg = LlamaConfig(vocab_size=params.tokenizer.vocab_size, dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
                      n_kv_heads=m.n_kv_heads, ffn_dim=m.ffn_dim, rope_base=m.rope_base, norm_eps=m.norm_eps,
                      tie_embeddings=m.tie_embeddings, max_seq_len=pre.seq_len)
    data = batches(cfg.vocab_size, args.steps, pre.batch_size, pre.seq_len)
    peak = measured_peak_flops()
    fpt = flops_per_token(Llama(cfg), pre.seq_len)
    herd_tps, hf_tps = [], []
    for r in range(args.rounds):
        herd_tps.append(herd_run(cfg, data, pre.lr, pre.warmup_steps, args.warmup))
        hf_tps.append(hf_trainer_run(cfg, data, pre.lr, pre.warmup_steps, args.warmup))
        print(f"round {r + 1}: herd {herd_tps[-1]:7.0f} tokens/s (MFU {herd_tps[-1] * fpt / peak:.3f})   "
              f"hf trainer {hf_tps[-1]:7.0f} tokens/s (MFU {hf_tps[-1] * fpt / peak:.3f})", flush=True)
    herd_med, hf_med = statistics.median(herd_tps), statistics.median(hf_tps)
    print(json.dumps({
        "benchmark": "pretrain", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "params": Llama(cfg).num_params(),
        "batch": pre.batch_size, "seq_len": pre.seq_len, "steps_timed": args.steps - args.warmup,
        "rounds": args.rounds, "peak_bf16_flops": round(peak), "herd_tokens_per_s": round(herd_med, 1),
        "hf_trainer_tokens_per_s": round(hf_med, 1), "herd_mfu": round(herd_med * fpt / peak, 4),
        "hf_trainer_mfu": round(hf_med * fpt / peak, 4), "ratio": round(herd_med / hf_med, 3),
        "round_ratios": [round(a / b, 3) for a, b in zip(herd_tps, hf_tps, strict=True)],
    }))


if __name__ == "__main__":
    main()
