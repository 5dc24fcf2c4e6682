"""The chunked form of local (windowed) attention: the state is the last w keys and values, not rho."""
from __future__ import annotations

import torch

from bdh_scale.model.bdh.attention.blocks import chunk_starts, chunks, decay_weights, local_log_decay
from bdh_scale.model.bdh.attention.state import AttnState


def window_chunks(q, k, v, state, log_g, w, C, need_state, acc, seg=None):
    """Each chunk attends to [w cached keys; its own keys] through a band mask 1 <= t-s <= w.

    With document boundaries (seg: segment ids), a query keeps only keys of its own segment; the
    cached keys belong to the segment the chunk starts in (those of older documents were zeroed
    when the cache was written, and zero keys and values contribute nothing)."""
    T = q.size(-2)
    # Extended key e sits at position e - w relative to the chunk start; query i keeps
    # 1 <= i - (e - w) <= w, i.e. i <= e <= i + w - 1.
    i = torch.arange(C, device=q.device)[:, None]
    e = torch.arange(w + C, device=q.device)[None, :]
    band = (e >= i) & (e <= i + w - 1)
    k_win, v_win, lg_win = state.k_win, state.v_win, state.lg_win
    starts = chunk_starts(seg, C)
    out = []
    for n, (p, qc, kc, vc, lg, sg) in enumerate(chunks(C, q, k, v, log_g, seg)):
        c = qc.size(-2)
        K = torch.cat([k_win.to(kc.dtype), kc], dim=-2)  # (B, H, w+c, N)
        V = torch.cat([v_win.to(vc.dtype), vc], dim=-2)  # (B, Hv, w+c, D)
        l, l_prev = local_log_decay(lg)
        # "Cumulative log g" of every extended key relative to the chunk start: a cached key
        # is lg_win older than L_{p-1}, so its weight for query i is exp(l_{i-1} + lg_win).
        ext = None if l is None else torch.cat([-lg_win, l], dim=-1)
        keep = band[:c, : w + c]
        if sg is not None:  # segment of every extended key: the cache's is the chunk start's
            ext_seg = torch.cat([starts[n][..., None].expand(*sg.shape[:-1], w), sg], dim=-1)
            keep = keep & (sg[..., :, None] == ext_seg[..., None, :])
        W = decay_weights(keep, l_prev, ext, qc.dtype)
        out.append(((qc @ K.transpose(-1, -2)) * W) @ V)
        if p + C >= T and not need_state:
            break
        k_win, v_win = K[..., -w:, :].to(acc), V[..., -w:, :].to(acc)
        lg_win = torch.zeros_like(lg_win) if l is None else (l[..., -1:] - ext)[..., -w:]
        if sg is not None:  # keys and values of an earlier document leave the cache
            old = ext_seg[..., -w:] != sg[..., -1:]  # (*lead, w); the same for every head
            k_win = k_win.masked_fill(old[..., None], 0)
            old_v = old.to(torch.int32).sum_to_size(*v_win.shape[:-1]) > 0  # values may be shared by heads
            v_win = v_win.masked_fill(old_v[..., None], 0)
    a = torch.cat(out, dim=-2).to(q.dtype) if out else q.new_zeros(*q.shape[:-1], v.size(-1))
    if not need_state:
        return a, None
    # Copies, not views into the last (w + C)-long K and V: a checkpoint saves whole storages.
    return a, AttnState(k_win=k_win.clone(), v_win=v_win.clone(), lg_win=lg_win)

