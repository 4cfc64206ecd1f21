"""A Llama prepared for decoding: the same function in fewer, cheaper kernel calls.

A decode step of a small model is bound by the number of kernels it launches, not by their
arithmetic: on 2 CPU cores at batch 16, a step's ~35 small ops per layer cost more than its
matmuls. `for_decoding` returns a copy, adapters merged, in which each layer's query, key and
value projections are one matrix (so queries and keys also rotate in one call), as are the
feed-forward's gate and up projections, and, under bf16, every projection holds its weight in
bf16, the dtype autocast would otherwise cast it to on every call. Its outputs are bit for bit
the original's (tests/test_model.py).

Prepared with `compile`, its prompt pass and decode steps also run through `torch.compile`, one
graph each for any batch, length and position (two more for batches without padding): inductor
fuses each layer's element-wise ops into a few kernels, ~1.5x eager's tokens/s at the default size
on this CPU (benchmarks/post_training.py), after ~100 s of compiling the first time on a machine
and ~25 s per process after (inductor's on-disk cache). Its bf16 intermediates round as eager's
do, but its reductions (RMSNorm, softmax) sum in another order: a rare token may differ (1 of the
default rejection_sample stage's 4,800 tempered samples did).
"""

import copy

import torch
from torch import nn

from herd.errors import HerdError
from herd.model.llama import Llama
from herd.model.lora import merge_lora
from herd.training.precision import compute_dtype


def joined(*layers: nn.Linear, dtype: torch.dtype) -> nn.Linear:
    """One Linear computing the outputs of `layers` side by side."""
    weight = torch.cat([layer.weight.detach() for layer in layers]).to(dtype)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=dtype)
    out.weight = nn.Parameter(weight, requires_grad=False)
    return out


def next_logits(model: Llama, ids: torch.Tensor, cache, start: int, pad: torch.Tensor | None,
                placed=None) -> torch.Tensor:
    """Logits of the token after each row's last: the head reads the last position alone (over a
    whole prompt, the vocabulary projection of every position would cost more than the layers)."""
    return model.lm_head(model.hidden(ids, cache, start, pad, placed)[:, -1]).float()


def for_decoding(model: Llama, precision: str, compile: bool = False) -> Llama:
    """A copy of `model` for generation under `precision` (bf16 | fp32), with the `next_logits` that
    generation calls (compiled if `compile`); a model already prepared for that precision is
    returned as it is (compiled or not, as it was prepared). The embedding stays fp32 (the residual
    stream starts from it), so a tied head gets a weight of its own."""
    if model.head != "lm":
        raise HerdError(f"only a language model decodes; this one has a {model.head!r} head")
    prepared = getattr(model, "decoding_precision", None)
    if prepared == precision:
        return model
    if prepared is not None:
        raise HerdError(f"this model was prepared for decoding in {prepared}, not {precision}: "
                        "prepare the original model instead")
    dtype = compute_dtype(precision)
    fast = merge_lora(copy.deepcopy(model)).eval().requires_grad_(False)
    for layer in fast.model.layers:
        attn = layer.self_attn
        attn.qkv_proj = joined(attn.q_proj, attn.k_proj, attn.v_proj, dtype=dtype)
        del attn.q_proj, attn.k_proj, attn.v_proj
        if not layer.is_moe:
            layer.mlp.gate_up_proj = joined(layer.mlp.gate_proj, layer.mlp.up_proj, dtype=dtype)
            del layer.mlp.gate_proj, layer.mlp.up_proj
    if fast.lm_head.weight is fast.model.embed_tokens.weight:
        fast.lm_head = joined(fast.lm_head, dtype=dtype)
    for module in fast.modules():
        if type(module) is nn.Linear:
            module.weight.data = module.weight.data.to(dtype)
    fast.decoding_precision = precision
    # Rounding each bf16 intermediate as eager does keeps the logits eager's up to reduction order
    # (without it, inductor's fp32 intermediates moved them by ~1e-2 and sampled tokens changed).
    fast.next_logits = torch.compile(next_logits, dynamic=True, options={"emulate_precision_casts": True}) \
        if compile else next_logits
    return fast
