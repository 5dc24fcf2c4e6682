"""The forgetting gates that decay the synaptic state.

rho_{t+1} = g_t * rho_t + q~_t x_t^T. With g = 1 (forget_mode none) rho only grows, as in the
paper; a learned per-head scalar g (scalar) or a per-head, per-token g computed from the layer
input (data, the Titans-style memory of the seed work) lets old associations fade. Gates are
handed to the attention kernels as log g <= 0, so decays over many tokens are sums, not products
that underflow.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# g starts near 1 (an effective memory of ~1/(1-g) = 400 tokens): the gate begins as the
# paper's non-forgetting state and learns to forget where that helps.
GATE_INIT_LOGIT = 6.0


def init_logits(n_head: int, timescales: list[float] | None) -> torch.Tensor:
    """The gate's starting logit per head. A head whose g = 1 - 1/tau remembers about tau tokens;
    timescales [tau_first, tau_last] spread the heads geometrically between them (as RetNet's
    per-head decays), so some heads keep local context sharp while others hold a long memory.
    None: every head at GATE_INIT_LOGIT."""
    if timescales is None:
        return torch.full((n_head,), GATE_INIT_LOGIT)
    lo, hi = (math.log(t) for t in timescales)
    taus = torch.logspace(lo, hi, n_head, base=math.e) if n_head > 1 else torch.tensor([math.exp(lo)])
    return torch.log(taus - 1)  # sigmoid(logit) = 1 - 1/tau


class ForgetGate(nn.Module):
    """log g per (batch, head, token), or None when nothing is forgotten."""

    def __init__(self, mode: str, n_head: int, n_embd: int, timescales: list[float] | None = None):
        super().__init__()
        self.mode = mode
        if mode == "scalar":
            self.logit = nn.Parameter(init_logits(n_head, timescales))
        elif mode == "data":
            self.proj = nn.Linear(n_embd, n_head)
            nn.init.normal_(self.proj.weight, std=0.02)
            with torch.no_grad():
                self.proj.bias.copy_(init_logits(n_head, timescales))

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """x: (B, T, D) layer input -> log g: (B, H, T) in float32, or None."""
        if self.mode == "scalar":
            B, T, _ = x.shape
            return F.logsigmoid(self.logit.float())[None, :, None].expand(B, -1, T)
        if self.mode == "data":
            return F.logsigmoid(self.proj(x).float()).transpose(1, 2)
        return None

