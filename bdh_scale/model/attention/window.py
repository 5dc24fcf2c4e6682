"""The chunked form of local (windowed) attention: the state is the last w keys and values, not rho."""
from __future__ import annotations

import torch

from bdh_scale.model.attention.blocks import chunks, decay_weights, local_log_decay
from bdh_scale.model.attention.state import AttnState


def window_chunks(q, k, v, state, log_g, w, C, need_state, acc):
    """Each chunk attends to [w cached keys; its own keys] through a band mask 1 <= t-s <= w."""
    T = q.size(-2)
    # Extended key e sits at position e - w relative to the chunk start; query i keeps
    # 1 <= i - (e - w) <= w, i.e. i <= e <= i + w - 1.
    i = torch.arange(C, device=q.device)[:, None]
    e = torch.arange(w + C, device=q.device)[None, :]
    band = (e >= i) & (e <= i + w - 1)
    k_win, v_win, lg_win = state.k_win, state.v_win, state.lg_win
    out = []
    for p, qc, kc, vc, lg in chunks(C, q, k, v, log_g):
        c = qc.size(-2)
        K = torch.cat([k_win.to(kc.dtype), kc], dim=-2)  # (B, H, w+c, N)
        V = torch.cat([v_win.to(vc.dtype), vc], dim=-2)  # (B, Hv, w+c, D)
        l, l_prev = local_log_decay(lg)
        # "Cumulative log g" of every extended key relative to the chunk start: a cached key
        # is lg_win older than L_{p-1}, so its weight for query i is exp(l_{i-1} + lg_win).
        ext = None if l is None else torch.cat([-lg_win, l], dim=-1)
        W = decay_weights(band[:c, : w + c], l_prev, ext, qc.dtype)
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

