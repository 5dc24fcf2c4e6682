"""Linear (softmax-free) attention of BDH.

Notation (docs/design.md): per head h, rotated queries q~_t and keys k~_t in R^N, values v_t in R^D
(the layer input x, shared by all heads), an optional per-token forgetting gate g_t in (0, 1]
given as log g_t <= 0, and the synaptic state

    rho_0 = 0,   a_t = c * q~_t^T rho_t,   rho_{t+1} = g_t * rho_t + k~_t v_t^T

which unrolls to a_t = c * sum_{s<t} w(t, s) (q~_t . k~_s) v_s with decay
w(t, s) = prod_{u=s+1}^{t-1} g_u = exp(L_{t-1} - L_s), L the running sum of log g.
A local window w keeps only the terms with t - s <= w.

`attend_parallel` is the quadratic form of the reference code and the test oracle for the
recurrent forms (chunked.py, linear in T, with the carried `AttnState`).
"""
from __future__ import annotations

import torch


def decay_mask(log_g: torch.Tensor | None, T: int, window: int | None, device, dtype,
               doc_start: torch.Tensor | None = None) -> torch.Tensor:
    """The T x T weights w(t, s) of the strictly causal (optionally windowed, decayed) map.

    Shape (T, T) without gates or boundaries, (*lead, T, T) with them. Built from differences of
    cumulative log gates, so every exponent is <= 0 and nothing overflows. doc_start (bool,
    (*lead, T)) marks tokens that begin a document: nothing before them is visible from them on.
    """
    t = torch.arange(T, device=device)
    diff = t[:, None] - t[None, :]
    keep = diff >= 1
    if window is not None:
        keep &= diff <= window
    if doc_start is not None:
        seg = torch.cumsum(doc_start.to(device), dim=-1)
        keep = keep & (seg[..., :, None] == seg[..., None, :])
    if log_g is None:
        return keep.to(dtype)
    # L_t = sum_{u<=t} log g_u, in fp32 at least (fp64 stays fp64: a float64 run is an exact oracle)
    L = torch.cumsum(log_g.to(torch.promote_types(log_g.dtype, torch.float32)), dim=-1)
    L_prev = torch.nn.functional.pad(L, (1, 0))[..., :-1]  # L_{t-1}, with L_{-1} = 0
    expo = L_prev[..., :, None] - L[..., None, :]  # L_{t-1} - L_s
    expo = expo.masked_fill(~keep, float("-inf"))
    return torch.exp(expo).to(dtype)


def attend_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    log_g: torch.Tensor | None = None,
    window: int | None = None,
    doc_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """a = scale * (mask * (q k^T)) v over a whole sequence; quadratic in T.

    q, k: (*lead, T, N); v: (*lead_v, T, D), lead_v broadcastable to lead; log_g: (*lead, T) or
    None; doc_start: bool broadcastable to (*lead, T) or None. Returns (*lead, T, D). The leading
    dims are lanes and heads in either order.
    """
    T = q.size(-2)
    scores = q @ k.transpose(-1, -2)
    scores = scores * decay_mask(log_g, T, window, q.device, scores.dtype, doc_start)
    if scale != 1.0:
        scores = scores * scale
    return scores @ v
