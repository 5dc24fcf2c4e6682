"""The hot path of BDH training: strictly causal linear attention whose queries are its keys.

In the reference model q~ = k~ (no forgetting, no window, no differential map), so the score map
S = k~ k~^T is symmetric. Autograd treats q and k as two inputs: in backward it runs dS k and
dS^T k as two (T x T) @ (T x N) products, transposes k for the second, and adds the results.
Here the backward uses (dS + dS^T) k: one product, no transpose, no add. The masked, scaled
score map is kept for backward (B*H*T*T, small next to the (B, H, T, N) activations at the
T where the parallel form is chosen).

Autocast: the forward runs in the autocast state it is called in (bf16 or fp16 products under
mixed precision) and the backward replays that state, as torch.amp.custom_bwd does for one device
type, here for the inputs' device. Without it the backward, which autograd runs outside the
model's autocast region, would multiply the half-precision saved scores with fp32 gradients.
"""
from __future__ import annotations

import torch


class CausalSelfAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        device = k.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        scores = torch.matmul(k, k.transpose(-1, -2))
        scores.tril_(-1)  # strictly causal: a token never sees itself
        if scale != 1.0:
            scores.mul_(scale)
        ctx.save_for_backward(k, v, scores)
        ctx.scale = scale
        return torch.matmul(scores, v)

    @staticmethod
    def backward(ctx, da: torch.Tensor):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return CausalSelfAttention._backward(ctx, da)

    @staticmethod
    def _backward(ctx, da: torch.Tensor):
        k, v, scores = ctx.saved_tensors
        d_scores = torch.matmul(da, v.transpose(-1, -2))
        d_scores.tril_(-1)
        if ctx.scale != 1.0:
            d_scores.mul_(ctx.scale)
        dv = torch.matmul(scores.transpose(-1, -2), da)
        dv = dv.sum_to_size(v.shape)  # summed over the heads where v is shared
        dk = torch.matmul(d_scores + d_scores.transpose(-1, -2), k)
        return dk, dv, None


def causal_self_attention(k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """a_t = scale * sum_{s<t} (k~_t . k~_s) v_s. k: (*lead, T, N); v: (*lead_v, T, D), lead_v
    broadcastable to lead (size 1 where heads share v)."""
    return CausalSelfAttention.apply(k, v, scale)
