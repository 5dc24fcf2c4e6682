"""The backward pass of the unwindowed chunked form: an autograd Function that recomputes the
chunk-start states rho_p instead of saving them."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from bdh_scale.model.bdh.attention.blocks import ChunkWeights, chunk_starts, chunks, mm_into, rho_forward, rho_update


class RhoChunks(torch.autograd.Function):
    """The unwindowed chunked form with a hand-written backward that recomputes the chunk-start
    states rho_p (one cheap sweep of updates) instead of having autograd save them: saving
    costs T/C * N * D per head, which for D/C > 1 is more than q itself, and it would stay
    alive, per layer, until the backward pass reaches the layer.

    Autocast: off in both passes (attend_chunked calls it with autocast disabled; the backward
    disables it again, since autograd runs it outside any region). Inputs may be half precision;
    the state, the products and the gradients accumulate in fp32 (docs/design.md, section 3).
    """

    @staticmethod
    def forward(ctx, q, k, v, log_g, rho0, scale, C, need_state, seg):
        """k None: the keys are the queries (BDH's q = k)."""
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, log_g, rho0, seg)
        ctx.scale, ctx.C, ctx.q_is_k = scale, C, k is None
        return rho_forward(q, q if k is None else k, v, log_g, rho0, scale, C, need_state, seg=seg)

    @staticmethod
    @once_differentiable
    def backward(ctx, da, drho):
        q, k, v, log_g, rho0, seg = ctx.saved_tensors
        k = q if ctx.q_is_k else k
        scale, C = ctx.scale, ctx.C
        acc = torch.promote_types(q.dtype, torch.float32)
        want_dl = log_g is not None and ctx.needs_input_grad[3]
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
        seg_starts = chunk_starts(seg, C)
        with torch.autocast(q.device.type, enabled=False):
            # Each chunk's weights, and the chunk-start states recomputed: rho_p for every chunk
            # (None: zero). The one transient (T/C, N, D) per head of the whole step, alive during
            # this layer's backward.
            def weights(n, lg, sg, need_W=True):
                c = min(C, q.size(-2) - n * C)
                seg_prev = None if sg is None else seg_starts[n]
                return ChunkWeights.of(causal[:c, :c], lg, sg, seg_prev, acc, acc, need_W)

            starts, rho = [], rho0
            for n, (_, kc, vc, lg, sg) in enumerate(chunks(C, k, v, log_g, seg)):
                starts.append(rho)
                if len(starts) * C < q.size(-2):
                    rho = rho_update(rho, kc.to(acc), vc.to(acc), weights(n, lg, sg, need_W=False))
            # Gradients are written chunk by chunk into whole buffers (per-head dv: v may be shared).
            # BDH's q is k: then one buffer takes both gradients, returned once.
            dq = torch.zeros_like(q, dtype=acc)
            dk = dq if ctx.q_is_k else torch.zeros_like(k, dtype=acc)
            dv = q.new_zeros(*q.shape[:-1], v.size(-1), dtype=acc)
            dlg = q.new_zeros(q.shape[:-1], dtype=acc) if want_dl else None
            per_chunk = list(enumerate(chunks(C, q, k, v, log_g, seg, da, dq, dk, dv, dlg)))
            for n, (p, qc, kc, vc, lg, sg, dac, *grads) in reversed(per_chunk):
                qc, kc, vc = qc.to(acc) * scale, kc.to(acc), vc.to(acc)
                rho_p, cw = starts.pop(), weights(n, lg, sg)  # rho_p freed once used
                W = causal[:qc.size(-2), :qc.size(-2)].to(acc) if cw.W is None else cw.W
                drho = rho_chunk_backward(qc, kc, vc, W, cw, rho_p, dac, drho, scale, *grads)
        dv = dv.sum_to_size(v.shape)  # summed over the heads where v is shared
        dk = None if ctx.q_is_k else dk.to(k.dtype)  # already in dq
        return (dq.to(q.dtype), dk, dv.to(v.dtype), dlg, drho, None, None, None, None)


def rho_chunk_backward(qc, kc, vc, W, cw, rho, da, drho, scale, dq, dk, dv, dlg):
    """Gradients through one chunk, in the accumulation dtype; returns the gradient of rho_p.

    qc is already scaled (qc = scale * q); W and cw are the chunk's weights (blocks.ChunkWeights);
    rho is the state at the chunk start and drho the gradient of the state after the chunk (None:
    zero). dq, dk, dv (per head) and dlg (None: not wanted) are this chunk's slices of the
    gradient buffers, accumulated in place; dq is dk when q is k. The scale goes onto the small
    (C, C) and (C, D) factors of dq, not onto dq itself. Every weight is exp(its exponent) or 0,
    so d weight / d exponent = weight: the log-gate gradients below use the weights themselves.
    """
    c = qc.size(-2)
    if dlg is not None:  # gradients of l and of l_prev_i = l_{i-1}
        dl, dl_prev = torch.zeros_like(dlg), torch.zeros_like(dlg)
    drho_p = None
    if da is not None:
        da = da.to(qc.dtype)
        if c > 1:  # in-chunk: P = S * W, a = P v
            S = qc @ kc.transpose(-1, -2)
            dv += (S * W).transpose(-1, -2) @ da
            dS = (da @ vc.transpose(-1, -2)) * W
            if dq is dk:  # q = k: d/dk (k S k^T) = (dS + dS^T) k, one product
                mm_into(dq, (dS + dS.transpose(-1, -2)).mul_(scale), kc)
            else:
                mm_into(dq, dS, kc, alpha=scale)
                mm_into(dk, dS.transpose(-1, -2), qc)
            if dlg is not None:  # d(l_prev_i - l_j) = dS * S
                dE = dS * S
                dl_prev += dE.sum(-1)
                dl -= dE.sum(-2)
        if rho is not None:  # before the chunk: a += e_in * (q rho)
            dae = da if cw.e_in is None else cw.e_in[..., None] * da
            mm_into(dq, dae, rho.transpose(-1, -2), alpha=scale)
            drho_p = qc.transpose(-1, -2) @ dae
            if dlg is not None:
                dl_prev += (dae * (qc @ rho)).sum(-1)
    if drho is not None:  # rho_next = gamma * rho + k^T (e_tail * v)
        e_tail = cw.e_tail
        vd = vc if e_tail is None else e_tail[..., None] * vc
        mm_into(dk, vd, drho.transpose(-1, -2))
        dvd = kc @ drho
        dv += dvd if e_tail is None else e_tail[..., None] * dvd
        if dlg is not None:
            de = (dvd * vc).sum(-1) * e_tail
            dl -= de
            dl[..., -1] += de.sum(-1)
        if rho is not None:
            g = drho if cw.gamma is None else cw.gamma[..., None, None] * drho
            drho_p = g if drho_p is None else drho_p.add_(g)  # into the fresh product
            if dlg is not None:
                dl[..., -1] += (g * rho).sum((-2, -1))
    if dlg is not None:
        dl[..., :-1] += dl_prev[..., 1:]
        dlg += dl.flip(-1).cumsum(-1).flip(-1)  # l = cumsum(log g)
    return drho_p

