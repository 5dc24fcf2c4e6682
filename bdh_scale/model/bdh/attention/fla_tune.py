"""`model.attn_backend: auto` on a CUDA GPU with flash-linear-attention installed: fla computes the
window lengths where it measures faster than the form auto would otherwise take (backend.py's
cost model was fit to CPU timings; fla's kernels have no CPU timing to fit).

Measured once per run before step 1, at the run's own shapes (its micro-batch, heads, N, D, gate,
state and compute dtype), one attention forward and backward of each form on random inputs, the
best of a few timings each: like cudnn.benchmark, it costs seconds and follows the device it is on.
"""
from __future__ import annotations

import time

import torch

from bdh_scale.model.bdh.attention import fla
from bdh_scale.model.bdh.attention.backend import pick_backend
from bdh_scale.model.bdh.attention.causal_self import causal_self_attention
from bdh_scale.model.bdh.attention.chunked import attend_chunked
from bdh_scale.model.bdh.attention.state import AttnState
from bdh_scale.utils.perf import synchronize

REPEATS = 3


def best_time(fn, device, repeats: int = REPEATS) -> float:
    """Fastest of `repeats` timed calls after one warm-up (compilation, autotuning, allocation)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def attention_step(kind: str, chunk: int, H, B, T, N, D, gated: bool, stateful: bool, device, dtype):
    """A forward and backward of one layer's attention in form `kind`, on fixed random inputs."""
    gen = torch.Generator(device=device).manual_seed(0)
    k = torch.rand(H, B, T, N, device=device, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(1, B, T, D, device=device, dtype=dtype, generator=gen).requires_grad_()
    log_g = torch.full((H, B, T), -0.01, device=device, requires_grad=True) if gated else None
    rho = torch.zeros(B, H, N, D, device=device) if stateful else None
    scale = N ** -0.5

    def step():
        if kind == "fla":
            a, _ = fla.attend_fla(k, k, v, scale, rho, log_g, stateful)
        elif kind == "parallel" and not gated and not stateful:
            a = causal_self_attention(k, v, scale)
        else:
            state = None if rho is None else AttnState(rho=rho).swap_lanes_heads()
            a, _ = attend_chunked(k, k, v, scale, state, log_g, None, chunk, stateful)
        a.float().square().mean().backward()

    return step


def tune(config, lengths, batch_size: int, device, dtype, stateful: bool) -> dict:
    """Measure fla against auto's own choice, for a model of `config`, at every window length in
    `lengths`. Returns {T: {"fla": seconds, "<other form>": seconds, "chosen": form}}; {} when auto
    cannot use fla here. The lengths fla wins belong in the model's fla_lengths (BDH.plan)."""
    if config.attn_backend != "auto" or config.attn_window is not None or fla.unavailable(device) is not None:
        return {}
    H, N, D = config.n_head, config.n_neurons, config.n_embd
    found = {}
    for T in sorted(set(lengths)):
        other, chunk = pick_backend(T, N, D)
        times = {}
        for kind in (other, "fla"):
            times[kind] = best_time(attention_step(kind, chunk, H, batch_size, T, N, D, config.forget_mode != "none",
                                                   stateful, device, dtype), device)
        found[T] = {**times, "chosen": min(times, key=times.get)}
    return found


def fla_wins(found: dict) -> set[int]:
    """The window lengths a tune() result gives to fla."""
    return {T for T, r in found.items() if r["chosen"] == "fla"}
