"""BDH attention on flash-linear-attention's Triton kernel (`model.attn_backend: fla`, CUDA only,
`pip install -e ".[gpu]"`): the adapter from BDH's attention to fla's `chunk_simple_gla` contract
(fla_reference.py states it).

BDH (docs/design.md, section 3), per head, with rho_0 the carried state:

    a_t = c q_t^T rho_t,      rho_{t+1} = g_t rho_t + k_t v_t^T        (strictly causal)

fla, with S_{-1} its initial state:   o_t = c q_t^T S_t,   S_t = exp(g_t) S_{t-1} + k_t v_t^T.

Fed BDH's own k, v and log g unshifted and initial state rho_0, fla's S_t is exactly BDH's
rho_{t+1} (same update, same order). So BDH's a_{t+1} = c q_{t+1}^T rho_{t+1} is fla's o_t for the
query q_{t+1}: the adapter shifts the queries one step back (the last one is zero and its output
dropped), and computes the one output fla's outputs do not hold, a_0 = c q_0^T rho_0, itself. The
final state is fla's final state as it is. That is strict causality with one tensor shifted
instead of three, and no correction of the final state.

The rest of the mapping: the value (the layer input, one tensor for all heads) is expanded to the
heads, as fla's state is per head; scale is BDH's own c (fla's default K^-1/2 would differ for
score_scale none); log g is fla's g (float32, [B, T, H]); the state is fla's [B, H, K, V] float32
initial and final state, which is BDH's lanes-first rho. Document boundaries go through fla's
cu_seqlens: each lane's window is cut at its document starts into sequences laid end to end, the
first of each lane starts from its rho, the others from zero, and each lane's state is the final
state of its last sequence. That is exact. A gate of -inf at a document start is not: fla
takes differences of cumulative log gates inside a chunk, and -inf - -inf is nan, while a large
finite gate loses the other gates' digits in float32.

What fla has no form for is refused by the config (model/config.py): the local window
(attn_window). Differential attention is q != k, which fla takes as it is.
"""
from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F

INSTALL = 'pip install -e ".[gpu]"'
# fla's gated backward is wrong on Hopper with Triton >= 3.4 and < 3.7.1 (fla refuses it there).
TRITON_HOPPER_MIN = (3, 7, 1)

_override = []  # a stand-in kernel (tests, gpu_check --dry-run), innermost last


@contextmanager
def stand_in(kernel=None):
    """Run the fla backend with `kernel` (default: the plain-PyTorch reference of fla's contract)
    in place of fla's Triton kernel, on any device: how the adapter is tested without a GPU."""
    if kernel is None:
        from bdh_scale.model.bdh.attention.fla_reference import simple_gla_reference as kernel
    _override.append(kernel)
    try:
        yield kernel
    finally:
        _override.pop()


@functools.lru_cache(maxsize=None)
def fla_kernel():
    """(fla's chunk_simple_gla, None), or (None, why it cannot be imported)."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as e:  # not installed, or Triton missing or broken
        return None, f"flash-linear-attention is not importable ({type(e).__name__}: {e}); install it with {INSTALL}"
    return chunk_simple_gla, None


def triton_version() -> str:
    """Triton's version ("0" if absent; fla's kernels need it). Imported in a try block: this module
    is also shipped as transformers code (model/hf/), and transformers requires every package a
    shipped file imports outside one to be installed."""
    try:
        import triton
    except ImportError:
        return "0"
    return triton.__version__


def version_tuple(text: str) -> tuple:
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:3])


def unavailable(device) -> str | None:
    """Why the fla backend cannot run on `device`, or None when it can (always with a stand-in)."""
    if _override:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return f"it runs flash-linear-attention's Triton kernels on CUDA GPUs, and this device is {device.type}"
    kernel, why = fla_kernel()
    if kernel is None:
        return why
    triton = triton_version()
    if torch.cuda.get_device_capability(device)[0] == 9 and version_tuple(triton) < TRITON_HOPPER_MIN:
        return (f"Triton {triton} computes fla's gated backward wrongly on Hopper GPUs; install "
                f"triton>={'.'.join(map(str, TRITON_HOPPER_MIN))} ({INSTALL} pins it)")
    return None


def kernel_for(device):
    """The kernel the adapter calls: the stand-in if one is set, else fla's (None if unavailable)."""
    if _override:
        return _override[-1]
    return None if unavailable(device) else fla_kernel()[0]


@functools.lru_cache(maxsize=None)
def warn_fallback(why: str) -> None:
    warnings.warn(f"model.attn_backend=fla: {why}; attention runs in the chunked form (the same function)",
                  stacklevel=3)


def attend_fla(q, k, v, scale: float, rho=None, log_g=None, need_state: bool = True, doc_start=None):
    """BDH attention through fla's kernel; equals attend_chunked.

    q, k: (H, B, T, N), BDH's heads-first layout; v: (Hv, B, T, D) with Hv 1 (shared) or H;
    log_g: (H, B, T) float, or None; rho: (B, H, N, D), the lanes-first carried state, or None
    (zero); doc_start: (B, T) bool or None. Returns a (H, B, T, D) in q's dtype and the state
    after the last token, (B, H, N, D) float32 (None unless need_state).
    """
    H, B, T, N = q.shape
    D = v.size(-1)
    kernel = kernel_for(q.device)
    with torch.autocast(q.device.type, enabled=False):  # the kernel runs in the inputs' dtype
        dtype = q.dtype
        # fla's [B, T, H, K] layout; shifting the queries and the layout change are one copy
        q_next = F.pad(q.permute(1, 2, 0, 3)[:, 1:], (0, 0, 0, 0, 0, 1))
        kf = k.permute(1, 2, 0, 3).contiguous()
        vf = v.permute(1, 2, 0, 3).expand(B, T, H, D).to(dtype).contiguous()
        g = None if log_g is None else log_g.permute(1, 2, 0).float().contiguous()
        h0 = None if rho is None else rho.float()
        if doc_start is None:
            o, ht = kernel(q_next, kf, vf, g=g, scale=scale, initial_state=h0, output_final_state=need_state)
        else:
            o, ht = by_documents(kernel, q_next, kf, vf, g, scale, h0, need_state, doc_start)
        a0 = torch.zeros(B, H, D, dtype=torch.float32, device=q.device) if h0 is None else \
            scale * torch.einsum("hbn,bhnd->bhd", q[:, :, 0].float(), h0)  # the output fla does not hold
        a = torch.cat([a0[:, None].to(o.dtype), o[:, :-1]], dim=1)
        if doc_start is not None:  # a document's first token reads a fresh state: nothing
            a = a.masked_fill(doc_start[:, :, None, None], 0)
    return a.permute(2, 0, 1, 3).to(dtype), ht


def by_documents(kernel, q_next, kf, vf, g, scale, h0, need_state, doc_start):
    """fla over the documents of every lane as sequences of one row (cu_seqlens): the first
    sequence of lane b starts from its state h0[b] (zero if a document starts at its first
    token), the others from zero; lane b's state is that of its last sequence. Returns the
    outputs (B, T, H, D) and the states (B, H, N, D) or None."""
    B, T, H, N = kf.shape
    starts = doc_start.clone()
    starts[:, 0] = True
    begin = starts.reshape(-1).nonzero().squeeze(1)  # where every sequence begins, in the row
    cu_seqlens = torch.cat([begin, begin.new_tensor([B * T])])
    seq_of = torch.cumsum(starts.reshape(-1).long(), 0) - 1  # sequence index of every token
    first = seq_of[torch.arange(B, device=kf.device) * T]  # each lane's first sequence
    last = seq_of[torch.arange(B, device=kf.device) * T + T - 1]
    init = None
    if h0 is not None:
        kept = h0.masked_fill(doc_start[:, 0, None, None, None], 0)
        init = h0.new_zeros(len(begin), *h0.shape[1:]).index_copy(0, first, kept)
    row = lambda x: None if x is None else x.reshape(1, B * T, *x.shape[2:])  # noqa: E731
    o, ht = kernel(row(q_next), row(kf), row(vf), g=row(g), scale=scale, initial_state=init,
                   output_final_state=need_state, cu_seqlens=cu_seqlens)
    return o.reshape(B, T, *o.shape[2:]), (ht[last] if need_state else None)
