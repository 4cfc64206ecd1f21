"""Post-training throughput: Herd's DPO and reward-model steps vs TRL's `DPOTrainer` and
`RewardTrainer`, and Herd's batched KV-cache sampler vs `transformers`' `generate`.

One model (params.yaml's `model`, random weights), saved by Herd's `save_checkpoint` and loaded by
`transformers`: the same weights on both sides. The same synthetic pairs (random ids, responses closed
by an end token) in the same batches and order (params.yaml's dpo / reward batch_size and seq_len);
AdamW (0.9/0.95, fused) at the section's lr, warmup + cosine, gradient clipping; `train.precision`
on both sides (bf16 autocast over fp32 weights) unless `--precision fp32`. Steps/s runs from the first
timed step's start to the last step's start, so dataset preparation, tokenization and reference
precomputation stay outside it; medians over alternating `--rounds`.

- DPO: Herd's step is herd/post/dpo.py's: reference log-probs computed once per pair before training
  (timed apart: `herd_ref_precompute_s`), then forward + backward + AdamW on the policy. TRL by
  default runs its reference model every step (`dpo_ratio_vs_trl`, the headline); its
  `precompute_ref_log_probs=True` is reported as `trl_precomputed_ref`.
- Reward: tasks/reward.py's Bradley-Terry `bt_step` vs `RewardTrainer`, the same score-head model
  loaded as `AutoModelForSequenceClassification`.
- Generation: greedy, KV cache, left-padded prompts of four lengths, exactly `--new-tokens` new
  tokens per row on both sides (no stop token), at each of `--batches`. Herd's model is prepared
  for decoding once (herd/model/decoding.py, `herd_prepare_s`), as `transformers` loads its model
  once: outside the timing, as serving does. `generate_ratio` is Herd's eager decoding against
  `generate`; `generate_ratio_compiled` is Herd with runtime.generate.compile, its compile paid in
  the warm-up (`herd_compile_s`, per round: the first compiles, later ones read inductor's cache)
  and the share of its tokens equal to eager's reported (`generate_same_tokens_compiled`).

Where the two sides differ by design, CAVEATS says so (in the JSON too). The last line printed is
one JSON object.

    python benchmarks/post_training.py [--steps 20] [--warmup 3] [--rounds 2] [--batches 1,16,64]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from herd.model.cross_entropy import IGNORE
from herd.model.decoding import for_decoding
from herd.model.llama import Llama, LlamaConfig, save_checkpoint
from herd.post.chat import ChatFormat
from herd.post.dpo import pair_batch, reference_logprobs
from herd.post.generate import generate
from herd.post.losses import dpo_loss, sequence_logprobs
from herd.recipe import check_params
from herd.runtime.config import TrainRuntime
from herd.training.config import TrainConfig
from herd.training.distributed import device
from herd.training.loop import LocalRun, train
from herd.training.schedule import warmup_cosine
from tasks.reward import bt_step

ROOT = Path(__file__).resolve().parents[1]
EOT, PAD, END = 0, 1, 2  # LlamaConfig's eot_id and pad_id; END closes every response (as <|end|> does)
CAVEATS = ["trl's gradient_checkpointing (its default: on) is off, so both sides do the same forward/backward",
           "trl's dpo forward also reads each sequence's last token, which predicts nothing (1 of seq_len + 1)",
           "herd's dpo reference log-probs are computed once before training (herd_ref_precompute_s, outside "
           "steps/s); trl's default recomputes them every step",
           "herd's generation model is prepared for decoding once (fused projections, bf16 weights; "
           "herd_prepare_s, outside tokens/s), as the hf model is loaded once",
           "generate_ratio_compiled sets herd's compiled decoding against hf's eager generate (its default), "
           "the compile paid outside tokens/s (herd_compile_s)"]


class Batcher:
    """ChatFormat's padded batches of (prompt, response) ids, for synthetic ids (no tokenizer)."""
    pad = PAD
    batch, conversations = ChatFormat.batch, ChatFormat.conversations


FMT = Batcher()


def pairs(n: int, room: int, vocab: int, seed: int) -> list[tuple[list[int], list[int], list[int]]]:
    """n (prompt, chosen, rejected) id lists, prompt + either response at most `room` tokens."""
    g = torch.Generator().manual_seed(seed)
    size = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    ids = lambda k: torch.randint(END + 1, vocab, (k,), generator=g).tolist()  # noqa: E731
    out = []
    for _ in range(n):
        p = size(room // 8, room // 4)
        out.append((ids(p), *(ids(size(room // 4, room - p) - 1) + [END] for _ in range(2))))
    return out


def both(chunk: list) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) rows of a chunk of pairs: the chosen rows, then the rejected rows."""
    return [(p, c) for p, c, _ in chunk] + [(p, r) for p, _, r in chunk]


def new_model(cfg: LlamaConfig, std: float, head: str = "lm") -> Llama:
    model = Llama(cfg, head)
    model.init_weights(std, torch.Generator().manual_seed(0))
    return model


def steps_per_s(begins: list[float], skip: int) -> float:
    return (len(begins) - 1 - skip) / (begins[-1] - begins[skip])


def herd_train(model, sec, args, batch_at, loss_fn) -> float:
    """Herd's training loop, as the stages run it."""
    begins = []

    def timed(step: int):
        begins.append(time.perf_counter())
        return [batch_at(sec.batch_size * step, sec.batch_size * (step + 1))]

    with tempfile.TemporaryDirectory() as tmp:
        run = LocalRun("bench", Path(tmp), train=TrainConfig(precision=args.precision),
                       runtime=TrainRuntime(checkpoint_every=10**9, log_every=10**9))
        train(run, model, steps=args.steps, batch_at=timed, loss_fn=loss_fn, weight_decay=sec.weight_decay,
              lr_at=lambda s: warmup_cosine(s, args.steps, min(sec.warmup_steps, args.steps), sec.lr, 0.1),
              grad_clip=sec.grad_clip, key="bench")
    return steps_per_s(begins, args.warmup)


def herd_dpo(cfg, std, data, sec, args) -> tuple[float, float]:
    rows = lambda chunk: pair_batch(FMT, chunk, sec.seq_len)  # noqa: E731
    ref, t0 = new_model(cfg, std), time.perf_counter()
    ref_logps = reference_logprobs(ref, FMT, data, sec.seq_len, args.precision, per_token=False)
    precompute_s = time.perf_counter() - t0

    def step_loss(model, batch):  # herd/post/dpo.py's step_loss with the sigmoid loss
        pi_chosen, pi_rejected = sequence_logprobs(model, batch).chunk(2)
        loss, metrics = dpo_loss(pi_chosen, pi_rejected, *batch["ref_logps"].unbind(1), sec.beta)
        return loss, {**metrics, "tokens": (batch["labels"] != IGNORE).sum()}

    rate = herd_train(new_model(cfg, std), sec, args,
                      lambda a, b: {**rows(data[a:b]), "ref_logps": ref_logps[a:b]}, step_loss)
    return rate, precompute_s


def herd_reward(cfg, std, data, sec, args) -> float:
    return herd_train(new_model(cfg, std, "score"), sec, args,
                      lambda a, b: FMT.conversations(both(data[a:b]), sec.seq_len), bt_step)


def hf_tokenizer(vocab: int):
    """Token i is the word `<i>`: TRL's DPO tokenizes text, and so gets exactly these ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(vocab)}, unk_token=f"<{END + 1}>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=f"<{PAD}>", eos_token=f"<{END}>")


def trl_run(kind: str, folder: Path, data, sec, args, **extra) -> float:
    """Steps/s of TRL's DPOTrainer (kind "dpo") or RewardTrainer ("reward") on `data`."""
    import transformers
    import trl
    from datasets import Dataset

    if kind == "dpo":
        text = lambda ids: "".join(f" <{i}>" for i in ids)  # noqa: E731
        rows = [{"prompt": text(p), "chosen": text(c), "rejected": text(r)} for p, c, r in data]
        model, config_cls, trainer_cls = transformers.AutoModelForCausalLM, trl.DPOConfig, trl.DPOTrainer
    else:
        rows = [{"chosen_ids": p + c, "rejected_ids": p + r} for p, c, r in data]
        model, config_cls, trainer_cls = (transformers.AutoModelForSequenceClassification, trl.RewardConfig,
                                          trl.RewardTrainer)
    begins = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            begins.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        config = config_cls(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=sec.batch_size,
            learning_rate=sec.lr, lr_scheduler_type="cosine", warmup_steps=min(sec.warmup_steps, args.steps),
            weight_decay=sec.weight_decay, adam_beta2=0.95, optim="adamw_torch_fused", max_grad_norm=sec.grad_clip,
            bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
            train_sampling_strategy="sequential", report_to=[], save_strategy="no", logging_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, seed=0, **extra)
        model = model.from_pretrained(folder)
        trainer = trainer_cls(model=model, args=config, train_dataset=Dataset.from_list(rows),
                              processing_class=hf_tokenizer(model.config.vocab_size), callbacks=[Clock()])
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # its end-of-run dict on stdout
        first = trainer.train_dataset[0]
        got = (first["prompt_ids"], first["chosen_ids"], first["rejected_ids"]) if kind == "dpo" else \
            (first["chosen_ids"], first["rejected_ids"])
        want = data[0] if kind == "dpo" else (data[0][0] + data[0][1], data[0][0] + data[0][2])
        assert got == want and len(trainer.train_dataset) == len(rows), "TRL trains on other ids"
        assert not trainer.args.gradient_checkpointing
        trainer.train()
    return steps_per_s(begins, args.warmup)


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two sides' generated tokens are the same."""
    pairs = [(x, y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


def herd_generate(model, prompts, new_tokens: int, precision: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = generate(model, prompts, new_tokens, (), precision=precision, batch_size=len(prompts))
    return time.perf_counter() - t0, [o[0] for o in out]


def hf_generate(model, prompts, new_tokens: int, precision: str) -> tuple[float, list]:
    t0, longest = time.perf_counter(), max(map(len, prompts))
    ids = torch.tensor([[PAD] * (longest - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.autocast(model.device.type, torch.bfloat16, enabled=precision == "bf16"):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             use_cache=True, pad_token_id=PAD)
    return time.perf_counter() - t0, out[:, longest:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per training run")
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating Herd / TRL / HF rounds, medians reported: a shared machine's speed drifts")
    parser.add_argument("--batches", default="1,16,64", help="generation batch sizes")
    parser.add_argument("--prompt-len", type=int, default=64, help="longest prompt; others are 1/4, 1/2, 3/4 of it")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: params.yaml's train.precision")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: dpo, reward, generate")
    args = parser.parse_args()
    if args.steps < args.warmup + 2:
        parser.error("--steps must be at least --warmup + 2")
    params = check_params(ROOT)
    m, dpo, rw = params.model, params.dpo, params.reward
    args.precision = args.precision or params.train.precision
    cfg = LlamaConfig(vocab_size=params.tokenizer.vocab_size, dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
                      n_kv_heads=m.n_kv_heads, ffn_dim=m.ffn_dim, rope_base=m.rope_base, norm_eps=m.norm_eps,
                      tie_embeddings=m.tie_embeddings, eot_id=EOT, pad_id=PAD,
                      max_seq_len=max(dpo.seq_len + 1, rw.seq_len, args.prompt_len + args.new_tokens))
    skip, dev, batches = set(args.skip.split(",")), device(), [int(b) for b in args.batches.split(",")]
    import transformers
    transformers.logging.set_verbosity_error()
    dpo_data = pairs(args.steps * dpo.batch_size, dpo.seq_len + 1, cfg.vocab_size, 1)
    rw_data = pairs(args.steps * rw.batch_size, rw.seq_len, cfg.vocab_size, 2)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(END + 1, cfg.vocab_size, (args.prompt_len * (4 - i % 4) // 4,), generator=g).tolist()
               for i in range(max(batches))]
    res: dict[str, list] = {}
    add = lambda k, v: res.setdefault(k, []).append(v)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        lm, score = Path(tmp) / "lm", Path(tmp) / "score"
        save_checkpoint(new_model(cfg, m.init_std), lm)
        save_checkpoint(new_model(cfg, m.init_std, "score"), score)
        for r in range(args.rounds):
            if "dpo" not in skip:
                herd, precompute_s = herd_dpo(cfg, m.init_std, dpo_data, dpo, args)
                add("dpo_herd", herd), add("herd_ref_precompute_s", precompute_s)
                add("dpo_trl", trl_run("dpo", lm, dpo_data, dpo, args, beta=dpo.beta, max_length=dpo.seq_len + 1))
                add("dpo_trl_precomputed_ref", trl_run("dpo", lm, dpo_data, dpo, args, beta=dpo.beta,
                                                       max_length=dpo.seq_len + 1, precompute_ref_log_probs=True))
            if "reward" not in skip:
                add("reward_herd", herd_reward(cfg, m.init_std, rw_data, rw, args))
                add("reward_trl", trl_run("reward", score, rw_data, rw, args, max_length=rw.seq_len))
            if "generate" not in skip:
                original, t0 = new_model(cfg, m.init_std).to(dev).eval(), time.perf_counter()
                herd_model = for_decoding(original, args.precision)
                add("herd_prepare_s", time.perf_counter() - t0)
                compiled, compile_s = for_decoding(original, args.precision, compile=True), 0.0
                hf = transformers.AutoModelForCausalLM.from_pretrained(lm).to(dev).eval()
                hf.generation_config.eos_token_id = None  # no early stop: every row makes new_tokens tokens
                for b in batches:
                    herd_generate(herd_model, prompts[:b], 4, args.precision)  # warm up all three
                    hf_generate(hf, prompts[:b], 4, args.precision)
                    compile_s += herd_generate(compiled, prompts[:b], 4, args.precision)[0]  # compiles here
                    t_herd, out_herd = herd_generate(herd_model, prompts[:b], args.new_tokens, args.precision)
                    t_hf, out_hf = hf_generate(hf, prompts[:b], args.new_tokens, args.precision)
                    t_compiled, out_compiled = herd_generate(compiled, prompts[:b], args.new_tokens, args.precision)
                    assert all(len(o) == args.new_tokens for o in out_herd + out_hf), "a side stopped early"
                    add(f"gen_herd_{b}", b * args.new_tokens / t_herd), add(f"gen_hf_{b}", b * args.new_tokens / t_hf)
                    add(f"gen_compiled_{b}", b * args.new_tokens / t_compiled)
                    add(f"gen_same_{b}", agreement(out_herd, out_hf))
                    add(f"gen_same_compiled_{b}", agreement(out_herd, out_compiled))
                add("herd_compile_s", compile_s)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.3g}" for k, v in res.items()), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    ratio = lambda a, b: round(med[a] / med[b], 3)  # noqa: E731
    out = {"benchmark": "post_training", "device": dev.type, "threads": torch.get_num_threads(),
           "precision": args.precision, "params": Llama(cfg).num_params(), "steps_timed": args.steps - args.warmup,
           "rounds": args.rounds, "caveats": CAVEATS}
    if "dpo" not in skip:
        out["dpo_steps_per_s"] = {k: round(med[f"dpo_{k}"], 3) for k in ("herd", "trl", "trl_precomputed_ref")}
        out["dpo_ratio_vs_trl"] = ratio("dpo_herd", "dpo_trl")
        out["dpo_ratio_vs_trl_precomputed_ref"] = ratio("dpo_herd", "dpo_trl_precomputed_ref")
        out.update(herd_ref_precompute_s=round(med["herd_ref_precompute_s"], 3), dpo_batch=dpo.batch_size,
                   dpo_seq_len=dpo.seq_len)
    if "reward" not in skip:
        out["reward_steps_per_s"] = {k: round(med[f"reward_{k}"], 3) for k in ("herd", "trl")}
        out.update(reward_ratio_vs_trl=ratio("reward_herd", "reward_trl"), reward_batch=rw.batch_size,
                   reward_seq_len=rw.seq_len)
    if "generate" not in skip:
        out["generate_tokens_per_s"] = {b: {s: round(med[f"gen_{s}_{b}"], 1) for s in ("herd", "compiled", "hf")}
                                        for b in batches}
        out["generate_ratio"] = {str(b): ratio(f"gen_herd_{b}", f"gen_hf_{b}") for b in batches}
        out["generate_ratio_compiled"] = {str(b): ratio(f"gen_compiled_{b}", f"gen_hf_{b}") for b in batches}
        out["generate_same_tokens"] = {str(b): round(res[f"gen_same_{b}"][-1], 3) for b in batches}
        out["generate_same_tokens_compiled"] = {str(b): round(min(res[f"gen_same_compiled_{b}"]), 3) for b in batches}
        out.update(new_tokens=args.new_tokens, prompt_len=args.prompt_len,
                   herd_prepare_s=round(med["herd_prepare_s"], 3),
                   herd_compile_s=[round(s, 1) for s in res["herd_compile_s"]])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
