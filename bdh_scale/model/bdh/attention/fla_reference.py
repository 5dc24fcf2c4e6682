"""flash-linear-attention's gated linear attention, token by token in plain PyTorch: the stand-in for
its Triton kernel `fla.ops.simple_gla.chunk_simple_gla` wherever that kernel cannot run (a CPU, the
test suite, `gpu_check --dry-run`), with the same contract:

    inputs  q, k [B, T, H, K], v [B, T, H, V], g [B, T, H] (log decay) or None,
            initial_state [S, H, K, V] or None, one per sequence
    S_t = exp(g_t) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t

The read is inclusive (o_t sees k_t: fla's mask keeps the diagonal, BDH's does not); scale None
means K^-1/2. With cu_seqlens (int64 [S+1], batch size 1) the row is S sequences laid end to end,
each from its own initial state, each with its own final state. o comes back in q's dtype, the
final states [S, H, K, V] in float32 (None unless output_final_state).

Why a stand-in of our own rather than fla's naive references (fla/ops/simple_gla/naive.py): the
package's __init__ imports its Triton kernels, so those references import only where Triton is
installed, about 690 MB that the CPU test install should not carry. This one follows fla's
recurrence literally, one token at a time, so it is an oracle independent of the chunked algebra
of both fla's kernel and our own chunked form; gpu_check compares it with fla's kernel and naive
reference where fla is installed.
"""
from __future__ import annotations

import torch


def simple_gla_reference(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None):
    """fla's chunk_simple_gla, computed token by token in float32 (see the module docstring)."""
    B, T, H, K = q.shape
    scale, dtype = K ** -0.5 if scale is None else scale, q.dtype
    q, k, v = q.float(), k.float(), v.float()
    g = None if g is None else g.float()
    h0 = None if initial_state is None else initial_state.float()
    if cu_seqlens is None:
        o, ht = recurrence(q, k, v, g, h0, scale)
    else:
        if B != 1:
            raise ValueError(f"The batch size is expected to be 1 rather than {B} when using `cu_seqlens`.")
        bounds = [int(b) for b in cu_seqlens]
        if h0 is not None and h0.shape[0] != len(bounds) - 1:
            raise ValueError(f"The number of initial states is expected to be {len(bounds) - 1}, not {h0.shape[0]}.")
        parts = [recurrence(q[:, a:b], k[:, a:b], v[:, a:b], None if g is None else g[:, a:b],
                            None if h0 is None else h0[n:n + 1], scale)
                 for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        o = torch.cat([p[0] for p in parts], dim=1)
        ht = torch.cat([p[1] for p in parts])
    return o.to(dtype), (ht if output_final_state else None)


def recurrence(q, k, v, g, S, scale):
    """Equally long sequences, token by token: q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) or
    None, S (B, H, K, V) or None (zero) -> o (B, T, H, V), the state after the last token."""
    B, T, H, K = q.shape
    if S is None:
        S = q.new_zeros(B, H, K, v.size(-1))
    outs = []
    for t in range(T):
        decayed = S if g is None else torch.exp(g[:, t])[..., None, None] * S
        S = decayed + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, v.size(-1))
    return o, S
