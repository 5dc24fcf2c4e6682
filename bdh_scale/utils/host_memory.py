"""Keep freed host memory in the process, so that training on a CPU does not page-fault its way
through every step.

glibc's malloc serves every request above 32 MiB (its largest mmap threshold) with a fresh mmap
and unmaps it on free. A BDH layer's neuron tensors are (H, B, T, N) floats, 67 MB at the seed
config, so each of them is a new mapping, and the kernel zero-fills every 4 KiB page on first
touch: an elementwise pass into fresh memory costs several times one into reused memory
(docs/guides/performance.md has the measurements).

With mmap switched off (M_MMAP_MAX = 0) every allocation comes from the heap, and with a high
trim threshold a freed block stays there for the next step's tensor of the same size. The
price is that the process keeps what it freed until it exits, and the heap fragments a little
(the resident set settles about 40% above the default allocator's peak at the seed config;
train.host_memory_reuse=false gives memory back). The PyTorch CPU tuning guides reach the same
end by preloading jemalloc or tcmalloc; mallopt needs no library and no launcher change.

Other platforms (macOS, musl, Windows) have their own allocators and are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # give memory back only past 1 GiB of free heap top


@functools.lru_cache(maxsize=None)
def keep_freed_host_memory() -> bool:
    """Tune glibc malloc as described above, once per process; True if it took effect."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


def proc_status_kib(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS: now; VmHWM: its peak,
    reset by exec). Linux only: OSError or StopIteration elsewhere."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
