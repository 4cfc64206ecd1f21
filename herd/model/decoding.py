"""A Llama prepared for decoding: the same function in fewer, cheaper kernel calls.

A decode step of a small model is bound by the number of kernels it launches, not by their
arithmetic: on 2 CPU cores at batch 16, a step's ~35 small ops per layer cost more than its
matmuls. `for_decoding` returns a copy, adapters merged, in which each layer's query, key and
value projections are one matrix (so queries and keys also rotate in one call), as are the
feed-forward's gate and up projections, and, under bf16, every projection holds its weight in
bf16, the dtype autocast would otherwise cast it to on every call. Its outputs are bit for bit
the original's (tests/test_model.py).
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


def for_decoding(model: Llama, precision: str) -> Llama:
    """A copy of `model` for generation under `precision` (bf16 | fp32); a model already prepared
    for it is returned as it is. The embedding stays fp32 (the residual stream starts from it), so
    a tied head gets a weight of its own."""
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
    return fast
