"""Pieces shared by the chunked forms (chunked.py forward, chunked_backward.py, window.py): splitting
along time, the local cumulative log decay of a chunk, decay weights, the rho update and a GEMM
that accumulates into its output.

For a chunk [p, p+C) the local cumulative log gates are l_i = sum_{u=p}^{p+i} log g_u (l_{-1} = 0),
so that for t = p+i and s = p+j the decay is w(t, s) = exp(l_{i-1} - l_j) (docs/design.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def chunks(C, *xs):
    """Per chunk: (start, x_1 chunk, x_2 chunk, ...), split along time (dim -2, or -1 for log g).

    split, not slicing in a loop: with autograd, each slice's backward writes a full (T, N)
    gradient, which made backward quadratic in T.
    """
    T = xs[0].size(-2)
    n = -(-T // C)
    parts = [[None] * n if x is None else x.split(C, dim=-1 if x.dim() == 3 else -2) for x in xs]
    return zip(range(0, T, C), *parts)


def local_log_decay(lg: torch.Tensor | None):
    """Per chunk: l (cumulative log g from the chunk start) and l_prev (l_{i-1}, l_{-1} = 0)."""
    if lg is None:
        return None, None
    l = torch.cumsum(lg, dim=-1)
    return l, F.pad(l, (1, 0))[..., :-1]


def decay_weights(keep: torch.Tensor, l_prev: torch.Tensor | None, l_keys: torch.Tensor | None, dtype):
    """w[i, j] = exp(l_prev_i - l_keys_j) where keep, else 0; the 0/1 mask without gates.

    The exponent is set to -inf before exp where not kept, so the (positive) exponents of
    dropped pairs never reach exp.
    """
    if l_prev is None:
        return keep.to(dtype)
    expo = l_prev[..., :, None] - l_keys[..., None, :]
    return torch.exp(expo.masked_fill(~keep, float("-inf"))).to(dtype)


def rho_update(rho, kc, vc, l, in_place=False):
    """rho_{p+C} = exp(l_{C-1}) rho_p + sum_j exp(l_{C-1} - l_j) k~_j v_j^T (rho None = 0).

    Runs only without autograd (forward and the backward's recompute), so it may write into
    tensors it made itself, and into rho when in_place.
    """
    vd = vc if l is None else torch.exp(l[..., -1:] - l)[..., None] * vc
    gamma = None if l is None or rho is None else torch.exp(l[..., -1])[..., None, None]
    kT = kc.transpose(-1, -2)
    # One token (generation) is an outer product: a GEMM with inner size 1 is several times
    # slower than addcmul, and addcmul in place into rho faster again (docs/performance.md).
    one = kc.size(-2) == 1
    if rho is None:
        return kT * vd if one else kT @ vd  # (..., N, D), per head even with shared v
    if one:
        if not in_place:
            return torch.addcmul(rho if gamma is None else gamma * rho, kT, vd)
        return (rho if gamma is None else rho.mul_(gamma)).addcmul_(kT, vd)
    if gamma is None:  # one GEMM that adds its product to rho: no (N, D) temporary
        return mm_into(rho if in_place else rho.clone(memory_format=torch.contiguous_format), kT, vd)
    # Into the fresh upd (or into rho when in place) in one pass over rho, with the same
    # arithmetic either way: in place and not, the states are bit for bit equal.
    upd = kT @ vd
    return torch.addcmul(upd, gamma, rho, out=rho if in_place else upd)


def mm_into(out, a, b, alpha=1.0):
    """out += alpha * a @ b over the leading dims (broadcast into out's), written by the GEMM itself:
    no (M, N) temporary and no second pass to add it (docs/performance.md: about a quarter faster
    for dq's (C, N) blocks).
    Returns out."""
    lead = out.shape[:-2]
    try:
        out3 = out.view(-1, *out.shape[-2:])
    except RuntimeError:  # leading dims not mergeable (a lanes-first state): product, then add
        return out.add_(a @ b, alpha=alpha)
    a = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])  # copies only a broadcast (shared v)
    b = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out3.baddbmm_(a, b, alpha=alpha)
    return out


def rho_forward(q, k, v, log_g, rho, scale, C, need_state, in_place=False):
    """Outputs a (in q's dtype) and the final rho (None when need_state=False)."""
    T, D, acc = q.size(-2), v.size(-1), torch.promote_types(q.dtype, torch.float32)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    out = []
    for p, qc, kc, vc, lg in chunks(C, q, k, v, log_g):
        c = qc.size(-2)
        qc = qc * scale
        l, l_prev = local_log_decay(lg)
        if c == 1:  # a single token never sees itself
            a = qc.new_zeros(*qc.shape[:-1], D, dtype=acc)
        else:  # in-chunk part, in the input dtype (half on GPU)
            W = decay_weights(causal[:c, :c], l_prev, l, qc.dtype)
            a = (((qc @ kc.transpose(-1, -2)) * W) @ vc).to(acc)
        if rho is not None:  # the part from before the chunk
            inter = qc.to(acc) @ rho
            a += inter if l is None else torch.exp(l_prev)[..., None] * inter
        out.append(a)
        if p + C < T or need_state:  # the stateless skip: no last update when the state is dropped
            rho = rho_update(rho, kc.to(acc), vc.to(acc), l, in_place)
    return torch.cat(out, dim=-2).to(q.dtype), (rho if need_state else None)

