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

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


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
        if window is None:
            return cls(rho=torch.zeros(B, H, N, D, device=device, dtype=dtype))
        return cls(
            k_win=torch.zeros(B, H, window, N, device=device, dtype=dtype),
            v_win=torch.zeros(B, Hv, window, D, device=device, dtype=dtype),
            lg_win=torch.zeros(B, H, window, device=device, dtype=dtype),
        )

    def _map(self, fn) -> "AttnState":
        return AttnState(**{f.name: None if (x := getattr(self, f.name)) is None else fn(x) for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: x for f in fields(self) if (x := getattr(self, f.name)) is not None}

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
) -> tuple[torch.Tensor, AttnState | None]:
    """Linear attention chunk by chunk, continuing from `state`; equals `attend_parallel`.

    q, k: (B, H, T, N); v: (B, 1 or H, T, D); log_g: broadcastable to (B, H, T), <= 0, or None.
    Returns a (B, H, T, D) in q's dtype and the state after the last token (None when
    need_state=False: the last chunk's state update is skipped, for callers that drop it).
    T = 1 is the generation step: O(N D) per token with rho, O(w N) with a window.

    Memory is linear in T: per chunk a C x C (C x (w+C) with a window) score block, and with
    plain autograd one (B, H, N, D) rho per chunk boundary, never one per token.
    """
    B, H, T, N = q.shape
    Hv, D = v.size(1), v.size(-1)
    # The state accumulates in fp32 even under autocast (which would run q @ rho in half).
    acc = torch.promote_types(q.dtype, torch.float32)
    if state is None:
        state = AttnState(rho=None) if window is None else AttnState.zeros(B, H, Hv, N, D, window, q.device, acc)
    elif (state.window) != window:
        raise ValueError(f"state has window {state.window}, call has window {window}")
    else:
        state = state.to(device=q.device, dtype=acc)
    if log_g is not None:
        log_g = log_g.to(acc).expand(B, H, T)
    if scale != 1.0:
        q = q * scale  # before the products: smaller scores in half precision
    with torch.autocast(q.device.type, enabled=False):
        if window is None:
            return _rho_chunks(q, k, v, state.rho, log_g, chunk_size, need_state, acc)
        return _window_chunks(q, k, v, state, log_g, window, chunk_size, need_state, acc)


def _chunks(q, k, v, log_g, C):
    """(start, q, k, v, log g) per chunk. split, not slicing: the backward of a slice writes a
    full (T, N) gradient per chunk, which made backward quadratic in T."""
    T = q.size(-2)
    parts = [x.split(C, dim=-2) for x in (q, k, v)]
    parts.append(log_g.split(C, dim=-1) if log_g is not None else [None] * len(parts[0]))
    return zip(range(0, T, C), *parts)


def _local_log_decay(lg: torch.Tensor | None):
    """Per chunk: l (cumulative log g from the chunk start) and l_prev (l_{i-1}, l_{-1} = 0)."""
    if lg is None:
        return None, None
    l = torch.cumsum(lg, dim=-1)
    return l, F.pad(l, (1, 0))[..., :-1]


def _masked(scores: torch.Tensor, keep: torch.Tensor, expo: torch.Tensor | None) -> torch.Tensor:
    """scores * w, w = keep (0/1) or exp(expo) where keep, 0 elsewhere (no exp of a kept-out value)."""
    if expo is None:
        return scores * keep.to(scores.dtype)
    return scores * torch.exp(expo.masked_fill(~keep, float("-inf"))).to(scores.dtype)


def _rho_chunks(q, k, v, rho, log_g, C, need_state, acc):
    B, H, T, N = q.shape
    D = v.size(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    out = []
    for p, qc, kc, vc, lg in _chunks(q, k, v, log_g, C):
        c = qc.size(-2)
        l, l_prev = _local_log_decay(lg)
        if c == 1:  # a single token never sees itself
            a = qc.new_zeros(B, H, 1, D, dtype=acc)
        else:
            expo = None if l is None else l_prev[..., :, None] - l[..., None, :]
            a = (_masked(qc @ kc.transpose(-1, -2), causal[:c, :c], expo) @ vc).to(acc)
        if rho is not None:  # the part from before the chunk (None: fresh state, rho = 0)
            inter = qc.to(acc) @ rho
            # Decays scale rows of the (c, D) products rather than the (c, N) keys and queries:
            # D < N, so autograd saves less.
            a = a + (inter if l is None else torch.exp(l_prev)[..., None] * inter)
        out.append(a)
        if p + C >= T and not need_state:
            break  # the stateless skip: the caller drops the state
        vd = vc.to(acc) if l is None else torch.exp(l[..., -1:] - l)[..., None] * vc.to(acc)
        upd = kc.to(acc).transpose(-1, -2) @ vd
        if rho is None:
            rho = upd
        elif l is None:
            rho = rho + upd
        else:
            rho = torch.exp(l[..., -1])[..., None, None] * rho + upd
    a = torch.cat(out, dim=-2).to(q.dtype) if out else q.new_zeros(B, H, 0, D)
    if not need_state:
        return a, None
    if rho is None:  # T = 0 on a fresh state
        rho = torch.zeros(B, H, N, D, dtype=acc, device=q.device)
    return a, AttnState(rho=rho)


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
    for p, qc, kc, vc, lg in _chunks(q, k, v, log_g, C):
        c = qc.size(-2)
        K = torch.cat([k_win.to(kc.dtype), kc], dim=-2)  # (B, H, w+c, N)
        V = torch.cat([v_win.to(vc.dtype), vc], dim=-2)  # (B, Hv, w+c, D)
        l, l_prev = _local_log_decay(lg)
        # "Cumulative log g" of every extended key relative to the chunk start: a cached key
        # is lg_win older than L_{p-1}, so its weight for query i is exp(l_{i-1} + lg_win).
        ext = None if l is None else torch.cat([-lg_win, l], dim=-1)
        expo = None if l is None else l_prev[..., :, None] - ext[..., None, :]
        a = _masked(qc @ K.transpose(-1, -2), band[:c, : w + c], expo) @ V
        out.append(a)
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
    """("parallel" | "chunked", chunk size) for attn_backend: auto, from measured costs."""
    raise NotImplementedError
