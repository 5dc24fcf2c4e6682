"""A --device argument checked before anything is loaded: torch's own failure for a device it was
not built for is a multi-line assertion deep inside the first .to(device)."""
from __future__ import annotations

import torch

from bdh_scale.errors import UsageError


def check_device(name: str) -> str:
    """`name` if this torch can use it, else one UsageError saying what can."""
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        usable = ", ".join(k for k, ok in available.items() if ok)
        raise UsageError(f"--device {name}: this torch has no {kind} device; use {usable}")
    return name
