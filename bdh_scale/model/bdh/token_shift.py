"""The previous-token path (`model.token_shift`): a short causal convolution over the residual stream.

    x'_t = LN(x_t + sum_{j=1}^{k-1} x_{t-j} @ W_j)        W_j: D x D, zero-initialised

BDH's queries are its keys (q~ = k~): the score of token t for token s is q~_t . q~_s, a
function of what t and s themselves are. An associative lookup, "this key again -> the value
that followed it", needs the key's information at the value's position, so that the key written
into rho by the value's token matches the query made by the key's token. Softmax attention learns
a previous-token head for that; linear attention cannot sharpen one. A token shift puts the
previous tokens' inputs into each token's own input, and the lookup becomes one product
(docs/design.md, "The previous-token path").

`embed` applies it once, to the token embeddings; `layer` before every layer, to its input
(which is also the value that layer writes into rho). Zero-initialised, a model starts as the
model without it. The last k-1 inputs it read are the state it carries (BDHState.shift), so
windows read one by one equal one long forward; a document start cuts it like the attention
state: no input of an earlier document is mixed in.

The GPT baseline takes the same path (model/gpt/gpt.py), without a carried state: it is the short
causal convolution Zoology's attention baseline opens with, and with it softmax attention learns
MQAR in a few hundred steps where it otherwise sits at 1/pairs (docs/results/recall_text.md).
"""
from __future__ import annotations

import torch
from torch import nn


class TokenShift(nn.Module):
    """x (B, T, D), the previous k-1 inputs (B, k-1, D) or None (a fresh stream: zeros), doc_start
    (B, T) bool or None -> (x + sum_j x_{t-j} W_j, the last k-1 inputs as the next call's state)."""

    def __init__(self, n_embd: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(kernel - 1, n_embd, n_embd))  # (x @ W_j) for tap j = 1 .. k-1

    @property
    def taps(self) -> int:
        return self.weight.size(0)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None,
                doc_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        k1 = self.taps
        prev = x.new_zeros(B, k1, D) if prev is None else prev.to(device=x.device, dtype=x.dtype)
        xx = torch.cat([prev, x], dim=1)  # (B, k-1+T, D): inputs t-k+1 .. t-1 ahead of the window
        same = None
        if doc_start is not None:  # segment ids: the carried inputs belong to the segment before the window
            seg = torch.cat([doc_start.new_zeros(B, k1, dtype=torch.long), doc_start.long().cumsum(1)], dim=1)
            same = lambda lo, n: (seg[:, lo:lo + n] == seg[:, -n:]).unsqueeze(-1).to(x.dtype)  # noqa: E731
        out = x
        for j in range(1, k1 + 1):
            shifted = xx[:, k1 - j:k1 - j + T]  # x_{t-j}
            if same is not None:
                shifted = shifted * same(k1 - j, T)
            out = out + shifted @ self.weight[j - 1]
        tail = xx[:, -k1:]
        if same is not None:  # what the next window may read: only the inputs of its first token's document
            tail = tail * (seg[:, -k1:] == seg[:, -1:]).unsqueeze(-1).to(x.dtype)
        return out, tail


def token_shifts(mode: str, n_embd: int, kernel: int, n_layers: int) -> nn.ModuleList:
    """The path's modules for model.token_shift: one for `embed`, one per layer for `layer`, none for `none`."""
    n = {"none": 0, "embed": 1, "layer": n_layers}[mode]
    return nn.ModuleList(TokenShift(n_embd, kernel) for _ in range(n))
