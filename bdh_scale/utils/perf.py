"""This device's achievable matmul throughput: the denominator of MFU in the training log and in
bdh-bench. Measured, not looked up: a datasheet peak means little for a laptop CPU or an MPS GPU,
and on CUDA the measured square-GEMM rate is what a model can hope to reach."""
from __future__ import annotations

import functools
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak_flops(device, dtype=torch.float32, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of an n x n x n GEMM in `dtype`: a timed loop after two warm-up products."""
    device = torch.device(device)
    if device.type == "cuda" and dtype == torch.float32:
        n, reps = 4096, 20  # bigger and more to outlast launch overhead
    gen = torch.Generator(device=device).manual_seed(0)  # the global RNG (dropout, resume) is left alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(2):
        a @ b
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the GEMMs run in under an Accelerate mixed_precision setting."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


@functools.lru_cache(maxsize=None)
def device_peak_flops(device: str, dtype: torch.dtype) -> float:
    """The training log's quick peak (a fraction of a second on a laptop CPU), measured once per process."""
    return matmul_peak_flops(device, dtype, n=1536, reps=4)


def memory_bandwidth(device, mbytes: int = 256, reps: int = 5) -> float:
    """Bytes/s of reading a buffer of `mbytes` (a sum over it), best of `reps`: the rate at which a
    step that must stream its weights and state can at best go. Sized like that working set, it
    includes whatever cache holds it (a server CPU's L3 holds a small model)."""
    device = torch.device(device)
    src = torch.ones(mbytes * 2**20 // 4, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        synchronize(device)
        t0 = time.perf_counter()
        src.sum()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return src.numel() * src.element_size() / best
