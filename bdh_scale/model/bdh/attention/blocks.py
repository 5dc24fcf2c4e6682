"""Pieces shared by the chunked forms (chunked.py forward, chunked_backward.py, window.py): splitting
along time, how much of each earlier term reaches each query and the next state within a chunk
(ChunkWeights: forgetting gates and document boundaries), the rho update and a GEMM that
accumulates into its output.

For a chunk [p, p+C) the local cumulative log gates are l_i = sum_{u=p}^{p+i} log g_u (l_{-1} = 0),
so that for t = p+i and s = p+j the decay is w(t, s) = exp(l_{i-1} - l_j) (docs/design.md).
Document boundaries come as segment ids, seg_t = the number of documents started at or before t
(docs/design.md, "Document boundaries"): t may read s only when seg_t == seg_s, and the state a
chunk starts from belongs to the segment of the token before the chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def segments(doc_start: torch.Tensor | None) -> torch.Tensor | None:
    """Segment ids (int32, same shape) from a bool mask of the tokens that begin a document."""
    return None if doc_start is None else torch.cumsum(doc_start, dim=-1, dtype=torch.int32)


def decay_weights(keep: torch.Tensor, l_prev: torch.Tensor | None, l_keys: torch.Tensor | None, dtype):
    """w[i, j] = exp(l_prev_i - l_keys_j) where keep, else 0; the 0/1 mask without gates.

    The exponent is set to -inf before exp where not kept, so the (positive) exponents of
    dropped pairs never reach exp.
    """
    if l_prev is None:
        return keep.to(dtype)
    expo = l_prev[..., :, None] - l_keys[..., None, :]
    return torch.exp(expo.masked_fill(~keep, float("-inf"))).to(dtype)


@dataclass
class ChunkWeights:
    """For one chunk: how much of each earlier term reaches each query and the next state.
    None means "all ones" (no gate, no boundary), so the plain chunk runs the plain arithmetic.

        a_i       = sum_j W[i, j] (q_i . k_j) v_j  +  e_in_i q_i^T rho_p
        rho_{p+C} = gamma rho_p  +  sum_j e_tail_j k_j v_j^T

    With gates, W = exp(l_{i-1} - l_j), e_in = exp(l_{i-1}), e_tail = exp(l_{C-1} - l_j),
    gamma = exp(l_{C-1}); a document boundary zeroes the terms that would cross it. Each weight
    is exp(its exponent) or 0, so its derivative in the exponent is itself: the backward's
    gate gradients need nothing else.
    """

    W: torch.Tensor | None  # (..., c, c), in the inputs' dtype; None: the strictly causal 0/1 mask
    e_in: torch.Tensor | None  # (..., c): weight of the chunk-start state for each query
    e_tail: torch.Tensor | None  # (..., c): weight of each key in the next state
    gamma: torch.Tensor | None  # (...,): weight of the chunk-start state in the next state

    @classmethod
    def of(cls, causal, lg, seg, seg_prev, dtype, acc, need_W: bool = True) -> "ChunkWeights":
        """causal: the (c, c) strictly causal mask; lg: the chunk's log gates or None; seg: its
        segment ids or None; seg_prev: the segment of the state the chunk starts from. need_W
        False leaves W out (None) for callers that only update the state."""
        l, l_prev = local_log_decay(lg)
        if seg is None:
            if l is None:
                return cls(None, None, None, None)
            W = decay_weights(causal, l_prev, l, dtype) if need_W else None
            return cls(W, torch.exp(l_prev), torch.exp(l[..., -1:] - l), torch.exp(l[..., -1]))
        keep = causal & (seg[..., :, None] == seg[..., None, :]) if need_W else None
        opened = seg == seg_prev[..., None]  # no boundary yet in this chunk: reads rho_p
        tail = seg == seg[..., -1:]  # in the last segment: reaches the next state
        kept = opened[..., -1]  # no boundary in the whole chunk: rho_p reaches the next state
        if l is None:
            W = keep.to(dtype) if need_W else None
            return cls(W, opened.to(acc), tail.to(acc), kept.to(acc))
        W = decay_weights(keep, l_prev, l, dtype) if need_W else None
        return cls(W, torch.exp(l_prev.masked_fill(~opened, float("-inf"))),
                   torch.exp((l[..., -1:] - l).masked_fill(~tail, float("-inf"))),
                   torch.exp(l[..., -1].masked_fill(~kept, float("-inf"))))


def rho_update(rho, kc, vc, cw: ChunkWeights, in_place=False):
    """rho_{p+C} = gamma rho_p + sum_j e_tail_j k~_j v_j^T (rho None = 0; see ChunkWeights).

    Runs only without autograd (forward and the backward's recompute), so it may write into
    tensors it made itself, and into rho when in_place.
    """
    vd = vc if cw.e_tail is None else cw.e_tail[..., None] * vc
    gamma = None if cw.gamma is None or rho is None else cw.gamma[..., None, None]
    kT = kc.transpose(-1, -2)
    # One token (generation) is an outer product: a GEMM with inner size 1 is several times
    # slower than addcmul, and addcmul in place into rho faster again (docs/guides/performance.md).
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
    no (M, N) temporary and no second pass to add it (docs/guides/performance.md: about a quarter faster
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


def chunk_starts(seg: torch.Tensor | None, C: int) -> list:
    """The segment each chunk's incoming state belongs to: that of the token before the chunk
    (0, the incoming state's, for the first chunk). None per chunk without boundaries."""
    T = 0 if seg is None else seg.size(-1)
    if seg is None:
        return None
    return [torch.zeros_like(seg[..., 0]) if p == 0 else seg[..., p - 1] for p in range(0, T, C)]


def rho_forward(q, k, v, log_g, rho, scale, C, need_state, in_place=False, seg=None):
    """Outputs a (in q's dtype) and the final rho (None when need_state=False); seg: segment ids
    (broadcastable to (*lead, T)) or None."""
    T, D, acc = q.size(-2), v.size(-1), torch.promote_types(q.dtype, torch.float32)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    starts = chunk_starts(seg, C)
    out = []
    for n, (p, qc, kc, vc, lg, sg) in enumerate(chunks(C, q, k, v, log_g, seg)):
        c = qc.size(-2)
        qc = qc * scale
        cw = ChunkWeights.of(causal[:c, :c], lg, sg, None if sg is None else starts[n], qc.dtype, acc)
        if c == 1:  # a single token never sees itself
            a = qc.new_zeros(*qc.shape[:-1], D, dtype=acc)
        else:  # in-chunk part, in the input dtype (half on GPU)
            W = causal[:c, :c].to(qc.dtype) if cw.W is None else cw.W
            a = (((qc @ kc.transpose(-1, -2)) * W) @ vc).to(acc)
        if rho is not None:  # the part from before the chunk
            inter = qc.to(acc) @ rho
            a += inter if cw.e_in is None else cw.e_in[..., None] * inter
        out.append(a)
        if p + C < T or need_state:  # the stateless skip: no last update when the state is dropped
            rho = rho_update(rho, kc.to(acc), vc.to(acc), cw, in_place)
    return torch.cat(out, dim=-2).to(q.dtype), (rho if need_state else None)

