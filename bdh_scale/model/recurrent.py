"""The recurrent (chunked, linear in T) form of BDH attention and the state it carries.

Same semantics as `attention.attend_parallel` (see its module docstring):

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

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


@dataclass
class AttnState:
    """The carried state of one attention layer (per lane b, per head h).

    Unwindowed: rho (B, H, N, D), the synaptic state; per head even when v is shared, since the
    keys differ. Windowed (w): k_win (B, H, w, N) and v_win (B, Hv, w, D), the last w rotated
    keys and values, oldest first, and lg_win (B, H, w), the log decay accumulated since each.

    A fresh state is all zeros. Zero keys and values contribute nothing to any score, so a
    window cache that is not yet full needs no length counter, and a lane can be restarted by
    zeroing it. The state is kept in float32 (float64 for float64 inputs) whatever the input
    dtype: it is a sum over the whole stream, and half precision would swallow new terms.
    attend_chunked casts an incoming state to that dtype and to the inputs' device.
    """

    rho: torch.Tensor | None = None
    k_win: torch.Tensor | None = None
    v_win: torch.Tensor | None = None
    lg_win: torch.Tensor | None = None

    @property
    def window(self) -> int | None:
        return None if self.k_win is None else self.k_win.size(-2)

    @classmethod
    def zeros(cls, B, H, Hv, N, D, window=None, device=None, dtype=torch.float32) -> "AttnState":
        return cls.zeros_for((B, H), (B, Hv), N, D, window, device, dtype)

    @classmethod
    def zeros_for(cls, lead, lead_v, N, D, window=None, device=None, dtype=torch.float32) -> "AttnState":
        """A fresh state for keys with leading dims `lead` and values with `lead_v` (either order
        of lanes and heads, as attend_chunked takes them)."""
        if window is None:
            return cls(rho=torch.zeros(*lead, N, D, device=device, dtype=dtype))
        return cls(
            k_win=torch.zeros(*lead, window, N, device=device, dtype=dtype),
            v_win=torch.zeros(*lead_v, window, D, device=device, dtype=dtype),
            lg_win=torch.zeros(*lead, window, device=device, dtype=dtype),
        )

    def _map(self, fn) -> "AttnState":
        return AttnState(**{name: fn(x) for name, x in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: x for f in fields(self) if (x := getattr(self, f.name)) is not None}

    def swap_lanes_heads(self) -> "AttnState":
        """The same state with dims 0 and 1 (lanes, heads) swapped, as views: the model keeps its
        states lanes-first for callers and computes heads-first (bdh.py), and a state it made
        itself swaps back to contiguous tensors, so neither direction copies."""
        return self._map(lambda x: x.transpose(0, 1))

    def detach(self) -> "AttnState":
        """Cut the graph here: truncated backpropagation through time."""
        return self._map(torch.Tensor.detach)

    def to(self, device=None, dtype=None) -> "AttnState":
        return self._map(lambda x: x.to(device=device, dtype=dtype))

    def reset_(self, mask: torch.Tensor) -> "AttnState":
        """Zero the lanes b where mask[b] is True (their stream restarted); returns self.

        In place on this object: its fields are replaced by new tensors. The old tensors are not
        written, so a state still saved by an autograd graph stays valid.
        """
        for name, x in self.tensors().items():
            m = mask.to(device=x.device, dtype=torch.bool).view(-1, *([1] * (x.dim() - 1)))
            setattr(self, name, x.masked_fill(m, 0))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors())

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> "AttnState":
        return cls(**d)


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
    saves writing a new (N, D) per head and token.

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
                a, rho = _rho_forward(q, k, v, log_g, rho, scale, chunk_size, need_state, in_place=True)
            else:
                a, rho = _RhoChunks.apply(q, k, v, log_g, rho, scale, chunk_size, need_state)
            return a, (AttnState(rho=rho) if need_state else None)
        if state is None:
            state = AttnState.zeros_for(lead, v.shape[:-2], N, D, window, q.device, acc)
        q = q * scale if scale != 1.0 else q  # before the products: smaller scores in half
        return _window_chunks(q, k, v, state, log_g, window, chunk_size, need_state, acc)


def _chunks(C, *xs):
    """Per chunk: (start, x_1 chunk, x_2 chunk, ...), split along time (dim -2, or -1 for log g).

    split, not slicing in a loop: with autograd, each slice's backward writes a full (T, N)
    gradient, which made backward quadratic in T.
    """
    T = xs[0].size(-2)
    n = -(-T // C)
    parts = [[None] * n if x is None else x.split(C, dim=-1 if x.dim() == 3 else -2) for x in xs]
    return zip(range(0, T, C), *parts)


def _local_log_decay(lg: torch.Tensor | None):
    """Per chunk: l (cumulative log g from the chunk start) and l_prev (l_{i-1}, l_{-1} = 0)."""
    if lg is None:
        return None, None
    l = torch.cumsum(lg, dim=-1)
    return l, F.pad(l, (1, 0))[..., :-1]


def _decay_weights(keep: torch.Tensor, l_prev: torch.Tensor | None, l_keys: torch.Tensor | None, dtype):
    """w[i, j] = exp(l_prev_i - l_keys_j) where keep, else 0; the 0/1 mask without gates.

    The exponent is set to -inf before exp where not kept, so the (positive) exponents of
    dropped pairs never reach exp.
    """
    if l_prev is None:
        return keep.to(dtype)
    expo = l_prev[..., :, None] - l_keys[..., None, :]
    return torch.exp(expo.masked_fill(~keep, float("-inf"))).to(dtype)


def _rho_update(rho, kc, vc, l, in_place=False):
    """rho_{p+C} = exp(l_{C-1}) rho_p + sum_j exp(l_{C-1} - l_j) k~_j v_j^T (rho None = 0).

    Runs only without autograd (forward and the backward's recompute), so it may write into
    tensors it made itself, and into rho when in_place.
    """
    vd = vc if l is None else torch.exp(l[..., -1:] - l)[..., None] * vc
    gamma = None if l is None or rho is None else torch.exp(l[..., -1])[..., None, None]
    kT = kc.transpose(-1, -2)
    # One token (generation) is an outer product: as a GEMM with inner size 1, bmm took 1.2 ms
    # for (4, 2048, 1) @ (4, 1, 256) here, addcmul 0.5 ms, and in place into rho 0.15 ms.
    one = kc.size(-2) == 1
    if rho is None:
        return kT * vd if one else kT @ vd  # (..., N, D), per head even with shared v
    if one:
        if not in_place:
            return torch.addcmul(rho if gamma is None else gamma * rho, kT, vd)
        return (rho if gamma is None else rho.mul_(gamma)).addcmul_(kT, vd)
    if gamma is None:  # one GEMM that adds its product to rho: no (N, D) temporary
        return _mm_into(rho if in_place else rho.clone(memory_format=torch.contiguous_format), kT, vd)
    # Into the fresh upd (or into rho when in place) in one pass over rho, with the same
    # arithmetic either way: in place and not, the states are bit for bit equal.
    upd = kT @ vd
    return torch.addcmul(upd, gamma, rho, out=rho if in_place else upd)


def _mm_into(out, a, b, alpha=1.0):
    """out += alpha * a @ b over the leading dims (broadcast into out's), written by the GEMM itself:
    no (M, N) temporary and no second pass to add it (27% faster for dq's (C, N) blocks here).
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


def _rho_forward(q, k, v, log_g, rho, scale, C, need_state, in_place=False):
    """Outputs a (in q's dtype) and the final rho (None when need_state=False)."""
    T, D, acc = q.size(-2), v.size(-1), torch.promote_types(q.dtype, torch.float32)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    out = []
    for p, qc, kc, vc, lg in _chunks(C, q, k, v, log_g):
        c = qc.size(-2)
        qc = qc * scale
        l, l_prev = _local_log_decay(lg)
        if c == 1:  # a single token never sees itself
            a = qc.new_zeros(*qc.shape[:-1], D, dtype=acc)
        else:  # in-chunk part, in the input dtype (half on GPU)
            W = _decay_weights(causal[:c, :c], l_prev, l, qc.dtype)
            a = (((qc @ kc.transpose(-1, -2)) * W) @ vc).to(acc)
        if rho is not None:  # the part from before the chunk
            inter = qc.to(acc) @ rho
            a += inter if l is None else torch.exp(l_prev)[..., None] * inter
        out.append(a)
        if p + C < T or need_state:  # the stateless skip: no last update when the state is dropped
            rho = _rho_update(rho, kc.to(acc), vc.to(acc), l, in_place)
    return torch.cat(out, dim=-2).to(q.dtype), (rho if need_state else None)


class _RhoChunks(torch.autograd.Function):
    """The unwindowed chunked form with a hand-written backward that recomputes the chunk-start
    states rho_p (one cheap sweep of updates) instead of having autograd save them: saving
    costs T/C * N * D per head, which for D/C > 1 is more than q itself, and it would stay
    alive, per layer, until the backward pass reaches the layer.
    """

    @staticmethod
    def forward(ctx, q, k, v, log_g, rho0, scale, C, need_state):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, log_g, rho0)
        ctx.scale, ctx.C, ctx.q_is_k = scale, C, q is k
        return _rho_forward(q, k, v, log_g, rho0, scale, C, need_state)

    @staticmethod
    @once_differentiable
    def backward(ctx, da, drho):
        q, k, v, log_g, rho0 = ctx.saved_tensors
        scale, C = ctx.scale, ctx.C
        acc = torch.promote_types(q.dtype, torch.float32)
        want_dl = log_g is not None and ctx.needs_input_grad[3]
        with torch.autocast(q.device.type, enabled=False):
            # The chunk-start states, recomputed: rho_p for every chunk (None: zero). The one
            # transient (T/C, N, D) per head of the whole step, alive during this layer's backward.
            starts, rho = [], rho0
            for _, kc, vc, lg in _chunks(C, k, v, log_g):
                starts.append(rho)
                if len(starts) * C < q.size(-2):
                    rho = _rho_update(rho, kc.to(acc), vc.to(acc), _local_log_decay(lg)[0])
            # Gradients are written chunk by chunk into whole buffers (per-head dv: v may be shared).
            # BDH's q is k: then one buffer takes both gradients, returned once.
            dq = torch.zeros_like(q, dtype=acc)
            dk = dq if ctx.q_is_k else torch.zeros_like(k, dtype=acc)
            dv = q.new_zeros(*q.shape[:-1], v.size(-1), dtype=acc)
            dlg = q.new_zeros(q.shape[:-1], dtype=acc) if want_dl else None
            causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
            chunks = list(_chunks(C, q, k, v, log_g, da, dq, dk, dv, dlg))
            for p, qc, kc, vc, lg, dac, *grads in reversed(chunks):
                qc, kc, vc = qc.to(acc) * scale, kc.to(acc), vc.to(acc)
                rho_p = starts.pop()  # freed once used
                drho = _rho_chunk_backward(qc, kc, vc, lg, rho_p, dac, drho, causal, scale, *grads)
        dv = dv.sum_to_size(v.shape)  # summed over the heads where v is shared
        dk = None if ctx.q_is_k else dk.to(k.dtype)  # already in dq
        return (dq.to(q.dtype), dk, dv.to(v.dtype), dlg, drho, None, None, None)


def _rho_chunk_backward(qc, kc, vc, lg, rho, da, drho, causal, scale, dq, dk, dv, dlg):
    """Gradients through one chunk, in the accumulation dtype; returns the gradient of rho_p.

    qc is already scaled (qc = scale * q); rho is the state at the chunk start and drho the
    gradient of the state after the chunk (None: zero). dq, dk, dv (per head) and dlg (None: not
    wanted) are this chunk's slices of the gradient buffers, accumulated in place; dq is dk when
    q is k. The scale goes onto the small (C, C) and (C, D) factors of dq, not onto dq itself.
    """
    c = qc.size(-2)
    l, l_prev = _local_log_decay(lg)
    if dlg is not None:  # gradients of l and of l_prev_i = l_{i-1}
        dl, dl_prev = torch.zeros_like(dlg), torch.zeros_like(dlg)
    drho_p = None
    if da is not None:
        da = da.to(qc.dtype)
        if c > 1:  # in-chunk: P = S * W, a = P v
            S = qc @ kc.transpose(-1, -2)
            W = _decay_weights(causal[:c, :c], l_prev, l, qc.dtype)
            dv += (S * W).transpose(-1, -2) @ da
            dS = (da @ vc.transpose(-1, -2)) * W
            if dq is dk:  # q = k: d/dk (k S k^T) = (dS + dS^T) k, one product
                _mm_into(dq, (dS + dS.transpose(-1, -2)).mul_(scale), kc)
            else:
                _mm_into(dq, dS, kc, alpha=scale)
                _mm_into(dk, dS.transpose(-1, -2), qc)
            if dlg is not None:  # d(l_prev_i - l_j) = dS * S
                dE = dS * S
                dl_prev += dE.sum(-1)
                dl -= dE.sum(-2)
        if rho is not None:  # before the chunk: a += exp(l_prev) * (q rho)
            dae = da if l is None else torch.exp(l_prev)[..., None] * da
            _mm_into(dq, dae, rho.transpose(-1, -2), alpha=scale)
            drho_p = qc.transpose(-1, -2) @ dae
            if dlg is not None:
                dl_prev += (dae * (qc @ rho)).sum(-1)
    if drho is not None:  # rho_next = gamma * rho + k^T (e_tail * v)
        e_tail = None if l is None else torch.exp(l[..., -1:] - l)
        vd = vc if l is None else e_tail[..., None] * vc
        _mm_into(dk, vd, drho.transpose(-1, -2))
        dvd = kc @ drho
        dv += dvd if l is None else e_tail[..., None] * dvd
        if dlg is not None:
            de = (dvd * vc).sum(-1) * e_tail
            dl -= de
            dl[..., -1] += de.sum(-1)
        if rho is not None:
            gamma = None if l is None else torch.exp(l[..., -1])[..., None, None]
            g = drho if l is None else gamma * drho
            drho_p = g if drho_p is None else drho_p.add_(g)  # into the fresh product
            if dlg is not None:
                dl[..., -1] += (g * rho).sum((-2, -1))
    if dlg is not None:
        dl[..., :-1] += dl_prev[..., 1:]
        dlg += dl.flip(-1).cumsum(-1).flip(-1)  # l = cumsum(log g)
    return drho_p


def _window_chunks(q, k, v, state, log_g, w, C, need_state, acc):
    """Each chunk attends to [w cached keys; its own keys] through a band mask 1 <= t-s <= w."""
    T = q.size(-2)
    # Extended key e sits at position e - w relative to the chunk start; query i keeps
    # 1 <= i - (e - w) <= w, i.e. i <= e <= i + w - 1.
    i = torch.arange(C, device=q.device)[:, None]
    e = torch.arange(w + C, device=q.device)[None, :]
    band = (e >= i) & (e <= i + w - 1)
    k_win, v_win, lg_win = state.k_win, state.v_win, state.lg_win
    out = []
    for p, qc, kc, vc, lg in _chunks(C, q, k, v, log_g):
        c = qc.size(-2)
        K = torch.cat([k_win.to(kc.dtype), kc], dim=-2)  # (B, H, w+c, N)
        V = torch.cat([v_win.to(vc.dtype), vc], dim=-2)  # (B, Hv, w+c, D)
        l, l_prev = _local_log_decay(lg)
        # "Cumulative log g" of every extended key relative to the chunk start: a cached key
        # is lg_win older than L_{p-1}, so its weight for query i is exp(l_{i-1} + lg_win).
        ext = None if l is None else torch.cat([-lg_win, l], dim=-1)
        W = _decay_weights(band[:c, : w + c], l_prev, ext, qc.dtype)
        out.append(((qc @ K.transpose(-1, -2)) * W) @ V)
        if p + C >= T and not need_state:
            break
        k_win, v_win = K[..., -w:, :].to(acc), V[..., -w:, :].to(acc)
        lg_win = torch.zeros_like(lg_win) if l is None else (l[..., -1:] - ext)[..., -w:]
    a = torch.cat(out, dim=-2).to(q.dtype) if out else q.new_zeros(*q.shape[:-1], v.size(-1))
    if not need_state:
        return a, None
    # Copies, not views into the last (w + C)-long K and V: a checkpoint saves whole storages.
    return a, AttnState(k_win=k_win.clone(), v_win=v_win.clone(), lg_win=lg_win)


def pick_backend(T: int, N: int, D: int, window: int | None = None) -> tuple[str, int]:
    """(backend, chunk size) for `attn_backend: auto`, by a cost model fit to CPU timings.

    Per token and head, a training step (forward and backward) costs about T (2N + 3D)
    multiply-adds in the parallel form (the whole T x T map, symmetric backward) and
    7 N D + C (4N + 3D) in the chunked one (q rho, the rho update, its recompute and three
    gradient products; then its C x C blocks). The parallel form's few large products run
    faster per flop than the chunked form's many small ones, so it stays the choice up to 1.3x
    the flop crossover (seed config, N, D = 2048, 256, whole model: parallel 1.06 s vs chunked
    1.17 s at T = 1024, 1.63 s vs 1.14 s at T = 2048); below 256 tokens it always wins. The best
    C measured was about N D / (N + D) / 2 as a power of two, in [64, 256] (2048, 256: C = 128,
    at T = 2048 1.14 s against 1.29 s for both 64 and 256): longer chunks waste the masked half
    of bigger blocks, shorter ones run skinny products. With a window (w = 64, T = 1024:
    parallel 0.75 s, chunked C = 64 0.24 s) the smallest power of two >= max(w, 64).

    "parallel" comes with C = T: if a state must be carried, attend_chunked with one chunk is
    the parallel product plus the state update. Past the crossover chunked is also the one whose
    memory stays linear in T.
    """
    if window is not None:  # no state to amortize: per token (w + C)(N + D), so C just covers w
        C = max(64, 1 << math.ceil(math.log2(window)))
        return ("parallel", T) if T <= max(256, window + C) else ("chunked", C)
    C = 1 << max(6, min(8, round(math.log2(N * D / (N + D) / 2))))
    crossover = 1.3 * (7 * N * D + C * (4 * N + 3 * D)) / (2 * N + 3 * D)
    return ("parallel", T) if T <= max(256, crossover) else ("chunked", C)
