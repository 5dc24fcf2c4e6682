"""This device's matmul throughput: the denominator of MFU in the training log and in bdh-bench.

Measured (the fastest of several timed GEMMs) where no datasheet figure means much, a laptop CPU or
an MPS GPU, and for fp32; a known GPU's dense datasheet peak in bf16/fp16, the figure MFU is
quoted against elsewhere (DENSE_PEAK_TFLOPS)."""
from __future__ import annotations

import functools
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, TFLOP/s, matched
# against torch.cuda.get_device_name() in this order (the first name found in it wins).
DENSE_PEAK_TFLOPS = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0),
)


def datasheet_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet's dense half-precision peak of a known GPU, FLOP/s; None for others and fp32."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    return next((t * 1e12 for name, t in DENSE_PEAK_TFLOPS if name in device_name), None)


def matmul_peak_flops(device, dtype=torch.float32, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of the fastest of `reps` timings of an n x n x n GEMM, after two warm-up products.

    The fastest, not the mean: interference (a busy start-up, another job on a shared machine)
    only ever adds time, so the fastest timing is the closest to what the device can do, and a
    busy moment cannot make the peak read low and MFU above 1. On CUDA each timing is several
    products, to outlast the launch and synchronization.
    """
    device = torch.device(device)
    inner = 1
    if device.type == "cuda":
        inner = 5
        if dtype == torch.float32:
            n = 4096  # bigger, to outlast launch overhead
    gen = torch.Generator(device=device).manual_seed(0)  # the global RNG (dropout, resume) is left alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * inner / best


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the GEMMs run in under an Accelerate mixed_precision setting."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


@functools.lru_cache(maxsize=None)
def device_peak_flops(device: str, dtype: torch.dtype) -> float:
    """The training log's peak, once per process: a known GPU's datasheet peak in half precision
    (what MFU is usually quoted against), else the measured one (a fraction of a second on a
    laptop CPU, the fastest of several timings)."""
    if torch.device(device).type == "cuda":
        known = datasheet_peak_flops(torch.cuda.get_device_name(torch.device(device)), dtype)
        if known is not None:
            return known
    return matmul_peak_flops(device, dtype, n=1536, reps=6)


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
