"""The recurrent (chunked, linear in T) form of BDH attention: `attend_chunked`, the entry point of
the chunk loops (blocks.py), their backward (chunked_backward.py) and the window form (window.py).

Same semantics as `parallel.attend_parallel` (see its module docstring):

    rho_0 = 0,   a_t = c * q~_t^T rho_t,   rho_{t+1} = g_t * rho_t + k~_t v_t^T

Chunk [p, p+C), local cumulative log gates l_i = sum_{u=p}^{p+i} log g_u (l_{-1} = 0), so that
for t = p+i and s = p+j the decay is w(t, s) = exp(l_{i-1} - l_j):

    a_t      = c * exp(l_{i-1}) q~_t^T rho_p  +  c * sum_{j<i} exp(l_{i-1} - l_j) (q~_t . k~_s) v_s
    rho_{p+C} = exp(l_{C-1}) rho_p  +  sum_j exp(l_{C-1} - l_j) k~_s v_s^T

Every exponent is a difference "later minus earlier" of a running sum of log g <= 0, so none is
positive: strong forgetting underflows to 0, it never overflows. The cumulative sums restart at
each chunk, so long streams do not lose precision in L_t either.

A window w has no finite rho; the state is the last w keys and values and, per cached key s,
lg = L_{t-1} - L_s, the log decay accumulated since it (what the next query multiplies by).
"""
from __future__ import annotations

import torch

from bdh_scale.model.bdh.attention.blocks import rho_forward, segments
from bdh_scale.model.bdh.attention.chunked_backward import RhoChunks
from bdh_scale.model.bdh.attention.state import AttnState
from bdh_scale.model.bdh.attention.window import window_chunks


def attend_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    state: AttnState | None = None,
    log_g: torch.Tensor | None = None,
    window: int | None = None,
    chunk_size: int = 64,
    need_state: bool = True,
    in_place: bool = False,
    doc_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, AttnState | None]:
    """Linear attention chunk by chunk, continuing from `state`; equals `attend_parallel`.

    q, k: (*lead, T, N); v: (*lead_v, T, D) with lead_v broadcastable to lead (a value shared by
    the heads has size 1 there); log_g: broadcastable to (*lead, T), <= 0, or None. The leading
    dims are lanes and heads in either order (the state's tensors have the same order).
    Returns a (*lead, T, D) in q's dtype and the state after the last token (None when
    need_state=False: the last chunk's state update is skipped, for callers that drop it).
    T = 1 is the generation step: O(N D) per token with rho, O(w N) with a window, whatever
    the length of the context behind the state. With in_place (no autograd; generation loops
    that own their state) an unwindowed state's rho is updated in place and returned, which
    saves writing a new (N, D) per head and token. doc_start (bool, broadcastable to
    (*lead, T)) marks tokens that begin a document: the state is reset right before them, so no
    token reads anything from an earlier document (docs/design.md, "Document boundaries").

    Memory is linear in T, no (T, T) and no per-token (N, D) tensor. Without a window the
    backward recomputes the chunk-start states rho_p instead of saving them, so a training step
    keeps only q, k, v, log_g and the incoming state for this layer; with a window plain autograd
    saves the per-chunk (C, w + C) blocks and cached keys, about one more copy of k.
    """
    lead, T, N, D = q.shape[:-2], q.size(-2), q.size(-1), v.size(-1)
    # The state accumulates in fp32 even for half inputs, and autocast is off inside (it would
    # run q @ rho and the updates in half).
    acc = torch.promote_types(q.dtype, torch.float32)
    if state is not None and state.window != window:
        raise ValueError(f"state has window {state.window}, the call has window {window}")
    if state is not None:
        state = state.to(device=q.device, dtype=acc)
    if log_g is not None:
        log_g = log_g.to(acc).expand(*lead, T)
    seg = segments(None if doc_start is None else doc_start.to(q.device).expand(*lead, T))
    chunk_size = max(1, min(chunk_size, T))  # no masks bigger than the call (T = 1 when generating)
    with torch.autocast(q.device.type, enabled=False):
        if window is None:
            rho = None if state is None else state.rho  # None: a fresh state, rho = 0
            if T == 0:
                state = state or AttnState.zeros_for(lead, v.shape[:-2], N, D, None, q.device, acc)
                return q.new_zeros(*lead, 0, D), state
            if in_place:
                if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, log_g, rho)):
                    raise ValueError("in_place state updates are for inference: run under torch.no_grad()")
                a, rho = rho_forward(q, k, v, log_g, rho, scale, chunk_size, need_state, in_place=True, seg=seg)
            else:
                # k goes in as None when it is q: torch.compile cannot trace a Function given the
                # same tensor twice, and the backward then keeps one buffer for both gradients.
                a, rho = RhoChunks.apply(q, None if k is q else k, v, log_g, rho, scale, chunk_size, need_state, seg)
            return a, (AttnState(rho=rho) if need_state else None)
        if state is None:
            state = AttnState.zeros_for(lead, v.shape[:-2], N, D, window, q.device, acc)
        q = q * scale if scale != 1.0 else q  # before the products: smaller scores in half
        return window_chunks(q, k, v, state, log_g, window, chunk_size, need_state, acc, seg)

