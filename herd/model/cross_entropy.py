"""The output projection and the next-token loss fused into one chunked pass.

The plain way materialises the whole (tokens x vocab) logit matrix, upcasts it to fp32, runs
log-softmax forward and backward over it and casts the gradient back: at this project's sizes that
memory traffic costs more than the projection's matmuls. Here each chunk of tokens is projected,
its loss and its logit gradient (softmax - one-hot) are computed in fp32 while the chunk is hot,
and the gradients of the hidden states and the weight are accumulated right away, so neither the
logits nor their gradient ever exist whole (the idea of Liger-Kernel's fused linear cross-entropy).
The loss is the same mean over the non-ignored tokens as `F.cross_entropy(..., ignore_index)`.
"""

import math

import torch

IGNORE = -100  # label of a position that is not scored (F.cross_entropy's ignore_index)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `labels` (IGNORE positions excluded),
    computed in the autocast dtype when autocast is on, as `F.linear` would be."""
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    # Gradients are computed during the forward pass, so only when a backward can follow.
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(hidden.flatten(0, -2), weight, labels.flatten(), dtype, grads)


def _chunk_rows(tokens: int, dim: int, vocab: int, device_type: str) -> int:
    if device_type == "cuda":
        # A GPU at these sizes waits on kernel launches, not memory: chunks of up to 2^28 logits
        # (1 GiB in fp32) keep the launches few.
        return max(1, min(tokens, 2**28 // vocab))
    # A chunk's logits take about as much memory as the hidden states: the loss then needs no more
    # memory than the layer before it, and the chunk stays cache-sized at small vocabularies.
    return max(1, min(tokens, 2 ** math.ceil(math.log2(max(1, tokens * dim // vocab)))))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, dtype, grads):
        h, w = hidden.to(dtype), weight.to(dtype)
        keep = labels != IGNORE
        count = keep.sum().clamp(min=1)
        grad_h = torch.empty_like(h) if grads else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grads else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = _chunk_rows(len(h), h.shape[1], w.shape[0], h.device.type)
        for s in range(0, len(h), rows):
            hc, yc, kc = h[s : s + rows], labels[s : s + rows], keep[s : s + rows]
            logits = (hc @ w.t()).float()
            target = logits.gather(1, yc.clamp(min=0)[:, None]).squeeze(1)
            top = logits.amax(-1, keepdim=True)
            exp = logits.sub_(top).exp_()  # in place: one exp serves the loss and the gradient
            norm = exp.sum(-1)
            total += ((top.squeeze(1) + norm.log() - target) * kc).sum()
            if grads:
                # d loss / d logits = (softmax - one-hot) / count on kept rows, 0 on ignored ones.
                weight_row = kc / count
                g = exp.mul_((weight_row / norm)[:, None])
                g[torch.arange(len(yc), device=g.device), yc.clamp(min=0)] -= weight_row
                g = g.to(dtype)
                grad_h[s : s + rows] = g @ w
                grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out).to(ctx.hidden_dtype), (grad_w * grad_out).to(ctx.weight_dtype), None, None, None
