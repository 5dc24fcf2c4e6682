"""How much memory this process can still take on a device, for checks made before allocating.

CPU (and MPS, whose memory is the host's): what the kernel says is available, lowered by the
limits that bind a process before the machine does: a cgroup's memory.max (a container, a SLURM
job) and an address-space rlimit (ulimit -v). CUDA: the device's free memory.
"""
from __future__ import annotations

import resource
from pathlib import Path

import psutil
import torch

CGROUP = Path("/sys/fs/cgroup")


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), None when unlimited or unknown."""
    try:
        line = Path("/proc/self/cgroup").read_text().strip().splitlines()[0]
        group = CGROUP / line.split(":", 2)[2].lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((group / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _rlimit_room() -> int | None:
    """RLIMIT_AS minus what the process has mapped, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - psutil.Process().memory_info().vms


def available_bytes(device: torch.device | str) -> tuple[int, str]:
    """(bytes this process can still allocate on `device`, what bounds it, in words)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}"
    rooms = [(psutil.virtual_memory().available, "available on this machine")]
    if (room := _cgroup_room()) is not None:
        rooms.append((room, "left under this job's memory limit (cgroup)"))
    if (room := _rlimit_room()) is not None:
        rooms.append((room, "left under this process's address-space limit (ulimit -v)"))
    if device.type == "mps":
        rooms.append((torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory(),
                      "that Metal recommends for this process"))
    return min(rooms)
