"""Batched sampling with a KV cache: prompts of any lengths, left-padded into batches of rows,
n samples per prompt (the rejection-sampling shape); greedy, temperature, top-k and top-p."""

import torch

from herd.model.decoding import for_decoding
from herd.training.distributed import device
from herd.training.precision import autocast, compute_dtype


def pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
         generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0, else a draw from the tempered
    distribution cut to its top_k tokens (0: all) and to its nucleus of mass top_p (1: all)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: tuple[int, ...],
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   generator: torch.Generator | None = None, precision: str = "bf16") -> list[list[int]]:
    """One continuation of each prompt, all in one batch, by a model `for_decoding` prepared; each is
    cut after its first stop token."""
    dev = device()
    model.to(dev).eval()
    longest, rows = max(len(p) for p in prompts), len(prompts)
    ids = torch.zeros(rows, longest, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
    pad = torch.tensor([longest - len(p) for p in prompts], device=dev)
    pad = pad if bool(pad.any()) else None  # prompts of one length need no mask
    # The cache holds keys and values in the dtype attention computes in, so no step converts it.
    dtype = compute_dtype(precision)
    cache = model.new_cache(rows, longest + max_new_tokens, dtype)
    # Every decode step's rotations and bias, computed at once (rows, so the bias is made even
    # without padding, each step to be sliced out): a step then costs only its layers.
    rows_pad = torch.zeros(rows, dtype=torch.long, device=dev) if pad is None else pad
    steps = model.place(longest, max_new_tokens, longest + max_new_tokens, rows_pad, dtype)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=dev)
    done = torch.zeros(rows, dtype=torch.bool, device=dev)
    out = []
    with autocast(precision):
        logits = model.next_logits(model, ids.to(dev), cache, 0, pad)
        for step in range(max_new_tokens):
            nxt = pick(logits, temperature, top_k, top_p, generator)
            out.append(nxt)
            done |= torch.isin(nxt, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            placed = tuple(t[:, :, step : step + 1] for t in steps)
            logits = model.next_logits(model, nxt[:, None], cache, longest + step, pad, placed)
    results = []
    for row in torch.stack(out, 1).tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), None)
        results.append(row if cut is None else row[: cut + 1])
    return results


def generate(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: tuple[int, ...], n: int = 1,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, precision: str = "bf16",
             batch_size: int = 64, compile: bool = False) -> list[list[list[int]]]:
    """n continuations of each prompt (a list of n token lists per prompt), generated `batch_size`
    rows at a time; rows are batched by prompt length, so padding stays small. The model decodes
    through `for_decoding`'s copy (~10 ms to make at the default size; its prompt pass and decode
    steps compiled if `compile`): a caller that generates again and again passes one made beforehand."""
    rows = [p for p in prompts for _ in range(n)]
    model = for_decoding(model.to(device()), precision, compile)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    out: list[list[int]] = [[] for _ in rows]
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        for r, seq in zip(chunk, generate_batch(model, [rows[r] for r in chunk], max_new_tokens, stop_ids,
                                                temperature, top_k, top_p, generator, precision), strict=True):
            out[r] = seq
    return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


def greedy(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: tuple[int, ...],
           precision: str = "bf16", batch_size: int = 64, compile: bool = False) -> list[list[int]]:
    """The greedy continuation of each prompt."""
    return [s[0] for s in generate(model, prompts, max_new_tokens, stop_ids, precision=precision,
                                   batch_size=batch_size, compile=compile)]
