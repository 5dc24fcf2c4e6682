"""Which mixed precision a recipe gets on this device.

fp16 needs a loss scaler and a GPU (CUDA or MPS); bf16 is fast on recent CUDA GPUs only (on a
CPU bf16 matmuls can be hundreds of times slower than fp32). A recipe written for an M1 or a GPU
must still run on a laptop CPU, so instead of failing we fall back to fp32 and say so once.
"""
from __future__ import annotations

import torch


def resolve_mixed_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(precision to use, notice to print or None)."""
    kind = device.type
    if requested == "no":
        return "no", None
    if kind == "cpu":
        return "no", (f"notice: train.mixed_precision={requested} needs a GPU (CUDA or MPS); "
                      "this run is on the CPU and uses fp32 instead")
    if kind == "mps" and requested == "bf16":
        return "fp16", "notice: bf16 is not supported on MPS; using fp16 with loss scaling instead"
    if kind == "cuda" and requested == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "notice: this GPU has no bf16; using fp16 with loss scaling instead"
    return requested, None
