"""The plain formulation of BDH: the reference code's way of computing the same function.

Kept as the baseline the benchmark measures the optimized path against, and as a second oracle:
quadratic attention masked with tril(-1), RoPE phases recomputed in float32 in every layer,
per-head broadcast matmuls, no caching and no fusion. It runs over a BDH module's own weights,
so both paths can be timed and compared on identical parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bdh_scale.model.output import ModelOutput


def _ln(x):
    return F.layer_norm(x, (x.size(-1),))


def _rope_reference(q: torch.Tensor, theta: float) -> torch.Tensor:
    """Phases t * f in float32, recomputed on every call, as in the reference."""
    N, T = q.size(-1), q.size(-2)
    i = torch.arange(N, dtype=torch.float32, device=q.device)
    freqs = 1.0 / (theta ** ((i / 2).floor() * 2 / N)) / (2 * math.pi)
    phases = torch.arange(T, dtype=torch.float32, device=q.device)[:, None] * freqs
    phases = (phases % 1) * (2 * math.pi)
    rot = torch.stack((-q[..., 1::2], q[..., ::2]), dim=-1).view(*q.size())
    return q * torch.cos(phases) + rot * torch.sin(phases)


class PlainBDH(nn.Module):
    """Wraps a BDH; forward computes its function the plain way (no state, no forgetting,
    no window, no differential attention: the reference has none of them)."""

    def __init__(self, bdh):
        super().__init__()
        c = bdh.config
        if c.forget_mode != "none" or c.attn_window is not None or c.diff_attn:
            raise ValueError("the plain formulation covers the reference model only: "
                             "forget_mode=none, attn_window=null, diff_attn=false")
        self.bdh = bdh
        self.config = c

    def num_params(self) -> int:
        return self.bdh.num_params()

    def forward(self, idx, targets=None, state=None, return_state=None) -> ModelOutput:
        if state is not None or return_state:
            raise ValueError("the plain formulation is stateless; use the BDH model for carried state")
        m, c = self.bdh, self.config
        B, T = idx.shape
        D, nh, N = c.n_embd, c.n_head, c.n_neurons
        scale = 1.0 / math.sqrt(N) if c.score_scale == "inv_sqrt_n" else 1.0
        x = _ln(m.embed(idx).unsqueeze(1))  # B, 1, T, D
        for i, layer in enumerate(m.layers):
            encoder, encoder_v, decoder = m.projections(i)
            x_sparse = F.relu(x @ encoder)  # B, nh, T, N
            QR = _rope_reference(x_sparse, c.rope_theta)
            scores = (QR @ QR.mT).tril(diagonal=-1) * scale
            yKV = _ln(scores @ x)
            y_sparse = F.relu(yKV @ encoder_v)
            xy_sparse = layer.drop(x_sparse * y_sparse)
            yMLP = xy_sparse.transpose(1, 2).reshape(B, 1, T, N * nh) @ decoder
            x = _ln(x + _ln(yMLP))
        logits = x.view(B, T, D) @ m.lm_head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return ModelOutput(logits=logits, loss=loss)
