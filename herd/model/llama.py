"""A Llama-style decoder in plain torch: grouped-query attention, RMSNorm pre-norm, SwiGLU, RoPE,
and optionally a Mixtral-style mixture-of-experts feed-forward (top-k routing, load-balancing loss).

Module names mirror Hugging Face's LlamaForCausalLM / MixtralForCausalLM /
LlamaForSequenceClassification, and RoPE uses the same rotate-half convention, so a checkpoint
saved here (config.json + model.safetensors) loads in `transformers` unchanged with the same logits.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from herd.errors import HerdError
from herd.model.cross_entropy import linear_cross_entropy

ROPE_SCALINGS = ("none", "linear", "ntk", "llama3")
LLAMA3_FREQ_FACTORS = (1.0, 4.0)  # Llama 3.1's low_freq_factor and high_freq_factor


@dataclass
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    eot_id: int = 0
    pad_id: int = 1
    n_experts: int = 0  # 0: dense SwiGLU; otherwise a mixture of this many experts
    experts_per_token: int = 2
    # RoPE scaling for a context longer than the one pretrained on (`rope_original_len`), by `rope_factor`.
    rope_scaling: str = "none"  # none | linear | ntk | llama3
    rope_factor: float = 1.0
    rope_original_len: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """RoPE's inverse frequencies, scaled: `linear` slows every rotation by the factor (position
        interpolation); `ntk` raises the base so the slowest rotation slows by the factor while the
        fastest stay (NTK-aware); `llama3` slows only the rotations whose wavelength exceeds the
        original context, blending over a band (Llama 3.1's low/high frequency factors 1 and 4)."""
        hd, base = self.head_dim, self.rope_base
        if self.rope_scaling == "ntk":
            base = self.effective_rope_base
        inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
        if self.rope_scaling == "linear":
            return inv / self.rope_factor
        if self.rope_scaling == "llama3":
            low, high = LLAMA3_FREQ_FACTORS
            wavelen = 2 * math.pi / inv
            smooth = ((self.rope_original_len / wavelen - low) / (high - low)).clamp(0, 1)
            return (1 - smooth) * inv / self.rope_factor + smooth * inv
        return inv

    @property
    def effective_rope_base(self) -> float:
        if self.rope_scaling != "ntk":
            return self.rope_base
        return self.rope_base * self.rope_factor ** (self.head_dim / (self.head_dim - 2))

    def hf_rope_scaling(self) -> dict | None:
        if self.rope_scaling == "linear":
            return {"rope_type": "linear", "factor": self.rope_factor}
        if self.rope_scaling == "llama3":
            low, high = LLAMA3_FREQ_FACTORS
            return {"rope_type": "llama3", "factor": self.rope_factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": self.rope_original_len}
        return None  # none, or ntk: a plain RoPE with the raised base

    def to_hf(self, architecture: str) -> dict:
        moe = {"model_type": "mixtral", "num_local_experts": self.n_experts,
               "num_experts_per_tok": self.experts_per_token, "sliding_window": None} if self.n_experts else {}
        return {
            "architectures": [architecture], "model_type": "llama", **moe, "vocab_size": self.vocab_size,
            "hidden_size": self.dim, "intermediate_size": self.ffn_dim, "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads,
            "rms_norm_eps": self.norm_eps, "rope_theta": self.effective_rope_base,
            "rope_scaling": self.hf_rope_scaling(), "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_seq_len, "bos_token_id": self.eot_id, "eos_token_id": self.eot_id,
            "pad_token_id": self.pad_id, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "torch_dtype": "float32", "num_labels": 1, "herd": asdict(self),
        }


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        # Normalise in fp32 even under bf16 autocast: the mean of squares loses precision otherwise.
        return F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps).to(x.dtype)


def rope_tables(cfg: LlamaConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Made where the positions are: a copy from the host would wait for the device's queue.
    freqs = positions.float()[:, None] * cfg.inv_freq(positions.device)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
        self.qkv_proj: nn.Linear | None = None  # the three joined, for decoding (herd/model/decoding.py)

    def project(self, x, cos, sin):
        """Queries (B, heads, T, hd) and keys (B, kv heads, T, hd), both rotated, and values."""
        B, T, _ = x.shape
        hd, nh, nkv = self.cfg.head_dim, self.cfg.n_heads, self.cfg.n_kv_heads
        if self.qkv_proj is None:
            q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)
            k = self.k_proj(x).view(B, T, nkv, hd).transpose(1, 2)
            v = self.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
            return apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype), v
        qkv = self.qkv_proj(x).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)
        qk = apply_rope(qkv[:, : nh + nkv], cos, sin).to(qkv.dtype)  # one rotation for both
        return qk[:, :nh], qk[:, nh:], qkv[:, nh + nkv :]

    def forward(self, x, cos, sin, cache=None, start=0, bias=None):
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is None and start > 0:
            raise HerdError("a forward pass from a position other than 0 needs a KV cache")
        if cache is not None:  # KV cache for generation: write this step's keys, attend to all so far
            cache[0][:, :, start : start + T] = k
            cache[1][:, :, start : start + T] = v
            keys = start + T if bias is None else bias.shape[-1]  # a decode step's mask spans the cache
            k, v = cache[0][:, :, :keys], cache[1][:, :, :keys]
        # A single new token attends to everything cached; a prompt (start == 0) is causal.
        if T > 1 and start > 0:
            raise HerdError("the KV cache takes a whole prompt at position 0, then one token at a time")
        return self.o_proj(attend(q, k, v, bias).transpose(1, 2).reshape(B, T, -1))


# Up to this many keys, bf16 attention on CPU is faster as plain matmuls than as the fused kernel:
# measured here (2 cores, avx512_bf16), its backward took 28 ms against 12 ms at 128 keys, half of a
# reward-model step, and a single decode token took 55% of generation's time. Past 256 the fused
# kernel wins and never materialises the scores.
SHORT_ATTENTION = 256


def attend(q, k, v, bias=None):
    """Grouped-query attention of q (B, heads, T, hd) on k, v (B, kv heads, S, hd), S >= T, the
    queries being the last T positions: causal, or masked by `bias` (B, 1, T, S) when given, 0 where
    a query may attend and -inf elsewhere (left padding, a KV cache's single token)."""
    short_on_cpu = q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[2] <= SHORT_ATTENTION
    if short_on_cpu or q.shape[2] == 1:
        return explicit_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None and q.shape[2] > 1,
                                          enable_gqa=k.shape[1] != q.shape[1])


def mask_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where `allowed`, -inf elsewhere: added to the scores rather than filled in, as the backward
    of an addition costs nothing."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def explicit_attention(q, k, v, bias=None):
    """`attend` as two batched matmuls, the query heads of one key/value head stacked as the rows of
    one product, so keys and values are never repeated. (The softmax of bf16 scores computes in fp32.)"""
    B, nh, T, hd = q.shape
    nkv, S = k.shape[1], k.shape[2]
    scores = ((q / math.sqrt(hd)).reshape(B, nkv, nh // nkv * T, hd) @ k.transpose(2, 3)).view(B, nkv, -1, T, S)
    if bias is None:
        bias = mask_bias(torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T), scores.dtype)
    else:
        bias = bias[:, :, None]  # (B, 1, 1, T, S) against the scores' (B, kv heads, group, T, S)
    probs = (scores + bias).softmax(-1).to(v.dtype)
    return (probs.view(B, nkv, -1, S) @ v).view(B, nh, T, hd)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # the two joined, for decoding (herd/model/decoding.py)

    def forward(self, x):
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Expert(nn.Module):
    """One SwiGLU expert, with Mixtral's parameter names (w1 gate, w3 up, w2 down)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    """Mixtral's sparse feed-forward: a router sends each token to its top-k experts, weighted by
    the renormalised router probabilities. `aux_loss` is the Switch-Transformer load-balancing
    term of the last forward pass (n_experts * sum over experts of token share * mean probability)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.k = cfg.experts_per_token
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.n_experts))
        self.aux_loss = torch.zeros(())

    def forward(self, x):
        shape, flat = x.shape, x.reshape(-1, x.shape[-1])
        probs = self.gate(flat).float().softmax(-1)
        weights, chosen = probs.topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel():
                y = expert(flat[rows]) * weights[rows, slot, None]
                out.index_add_(0, rows, y.to(out.dtype))
        share = F.one_hot(chosen, len(self.experts)).float().mean(0)  # (k, n_experts)
        self.aux_loss = len(self.experts) * (share * probs.mean(0)).sum()
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.n_experts:
            self.block_sparse_moe = MoE(cfg)
        else:
            self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, start=0, bias=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, start, bias)
        ffn = self.block_sparse_moe if self.is_moe else self.mlp
        return x + ffn(self.post_attention_layernorm(x))

    @property
    def is_moe(self) -> bool:
        return hasattr(self, "block_sparse_moe")


class Backbone(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Llama(nn.Module):
    """Causal LM (`head="lm"`) or scalar reward model (`head="score"`, Bradley-Terry)."""

    def __init__(self, cfg: LlamaConfig, head: str = "lm"):
        super().__init__()
        self.cfg, self.head = cfg, head
        self.model = Backbone(cfg)
        if head == "lm":
            self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        else:
            self.score = nn.Linear(cfg.dim, 1, bias=False)

    def init_weights(self, std: float, generator: torch.Generator | None = None) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                # GPT-2 style: residual output projections scaled down by depth for a stable start.
                residual_out = name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight"))
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if residual_out else 1
                nn.init.normal_(p, std=std * scale, generator=generator)

    def place(self, start: int, T: int, span: int, pad: torch.Tensor | None, dtype: torch.dtype):
        """Where queries at positions start .. start + T - 1 sit: RoPE's (cos, sin) for them and their
        attention bias over `span` keys in `dtype` (None when plainly causal). `pad` (B,): how many
        left-padding tokens each row starts with; padding is never attended to and each row's
        positions start after it. A decode loop places all its steps at once and slices them."""
        dev = self.model.embed_tokens.weight.device
        positions = torch.arange(start, start + T, device=dev)
        bias = None
        if pad is not None or span > start + T:
            pad = torch.zeros(1, dtype=torch.long, device=dev) if pad is None else pad
            keys = torch.arange(span, device=dev)
            valid = keys[None, None, :] >= pad[:, None, None]
            causal = keys[None, None, :] <= positions[None, :, None]
            # A padding query attends to itself alone, so no row of the softmax is empty.
            bias = mask_bias((valid & causal | (keys[None, None, :] == positions[None, :, None]))[:, None], dtype)
            positions = (positions[None, :] - pad[:, None]).clamp(min=0)
        cos, sin = rope_tables(self.cfg, positions.reshape(-1))
        if positions.dim() == 2:  # per-row positions: (B, 1, T, head_dim) against q and k's (B, heads, T, head_dim)
            cos, sin = cos.view(len(pad), 1, T, -1), sin.view(len(pad), 1, T, -1)
        return cos, sin, bias

    def hidden(self, idx, cache=None, start=0, pad=None, placed=None):
        """The final hidden states of `idx` (B, T) at positions start .. start + T - 1, after left
        padding `pad` (B,) if given; `placed` is this call's `place`, when computed beforehand."""
        x = self.model.embed_tokens(idx)
        if placed is None:
            T = idx.shape[1]
            # A decode step attends over the whole cache, masked past its position: a whole tensor is
            # contiguous, and CPU's bf16 matmul copies a slice of one (twice the attention's time here).
            span = cache[0][0].shape[2] if cache is not None and T == 1 else start + T
            autocast = torch.is_autocast_enabled(idx.device.type)  # the bias comes in the scores' dtype
            placed = self.place(start, T, span, pad, torch.get_autocast_dtype(idx.device.type) if autocast else x.dtype)
        cos, sin, bias = placed
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if cache is None else cache[i], start, bias)
        return self.model.norm(x)

    def forward(self, idx, cache=None, start=0, labels=None, pad=None):
        """Logits (B, T, vocab) for an LM; per-token scores (B, T) for a reward model. Given `labels`,
        an LM returns their mean next-token loss instead, without materialising the logits."""
        h = self.hidden(idx, cache, start, pad)
        if self.head == "lm" and labels is not None:
            return linear_cross_entropy(h, self.lm_head.weight, labels)
        if self.head == "lm":
            return self.lm_head(h)
        # Rewards rank samples that differ by little: score in fp32 even under bf16 autocast.
        with torch.autocast(h.device.type, enabled=False):
            return self.score(h.float()).squeeze(-1)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE load-balancing terms of the last forward pass (0 for a dense model)."""
        return sum((layer.block_sparse_moe.aux_loss for layer in self.model.layers if layer.is_moe),
                   torch.zeros(()))

    def new_cache(self, batch: int, length: int, dtype=torch.float32):
        shape = (batch, self.cfg.n_kv_heads, length, self.cfg.head_dim)
        dev = self.model.embed_tokens.weight.device
        return [(torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev))
                for _ in self.model.layers]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_checkpoint(model: Llama, folder: Path) -> None:
    """config.json + model.safetensors in the Hugging Face layout (no pickles)."""
    folder.mkdir(parents=True, exist_ok=True)
    if model.head == "score":
        arch = "LlamaForSequenceClassification"
    else:
        arch = "MixtralForCausalLM" if model.cfg.n_experts else "LlamaForCausalLM"
    (folder / "config.json").write_text(json.dumps(model.cfg.to_hf(arch), indent=2) + "\n")
    state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
    if model.head == "lm" and model.cfg.tie_embeddings:
        state.pop("lm_head.weight")  # tied: HF re-ties it from embed_tokens on load
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_checkpoint(folder: Path, head: str | None = None, **overrides) -> Llama:
    """Load a checkpoint; `head` switches an LM to a reward model (score head freshly zeroed)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HerdError(f"missing checkpoint {config_path}: run the stage that produces it first")
    hf = json.loads(config_path.read_text())
    cfg = LlamaConfig(**{**hf["herd"], **overrides})
    saved_head = "score" if hf["architectures"][0].endswith("SequenceClassification") else "lm"
    model = Llama(cfg, head or saved_head)
    state = load_file(str(folder / "model.safetensors"))
    if model.head != saved_head:
        state = {k: v for k, v in state.items() if k.startswith("model.")}
        if model.head == "score":
            nn.init.zeros_(model.score.weight)  # every response starts at reward 0
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if model.head != saved_head:
        allowed_missing |= {"score.weight", "lm_head.weight"}
    if set(missing) - allowed_missing or unexpected:
        raise HerdError(f"checkpoint {folder} does not match its config: missing {missing}, unexpected {unexpected}")
    return model
