"""Micro-benchmark of the attention backends: forward+backward time and memory.

    python -m bdh_scale.bench.attention --T 256 1024 2048 --chunks 64 128 256 [--gate data] [--mem]

Time is the best of --reps forward+backward passes after one warm-up (best, not median: the
CPU is shared, and interference only ever adds time). The chunked backend runs as in TBPTT
training: from a carried state, returning the new one.

--mem adds, each from a fresh subprocess, two numbers for one forward+backward:
  saved: bytes autograd keeps between forward and backward (saved-tensor hooks, storages counted
         once): the activation memory a layer adds to a training step; exact.
  peak:  growth of the peak resident set (VmHWM, reset first; glibc's mmap threshold pinned so
         freed blocks go back to the OS), inputs excluded; on CUDA max_memory_allocated.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bdh_scale.model.bdh.attention import AttnState, attend_chunked, attend_parallel, pick_backend
from bdh_scale.utils.host_memory import proc_status_kib


def _inputs(B, H, T, N, D, gate, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.relu(torch.randn(B, H, T, N, generator=g)).to(device).requires_grad_()
    v = torch.randn(B, 1, T, D, generator=g).to(device).requires_grad_()
    log_g = None
    if gate == "data":
        log_g = (-torch.rand(B, H, T, generator=g) * 0.01).to(device).requires_grad_()
    return q, v, log_g


def _carried_state(backend, B, H, N, D, device):
    return None if backend == "parallel" else AttnState.zeros(B, H, 1, N, D, device=device)


def _step(backend, C, q, v, log_g, state):
    scale = q.size(-1) ** -0.5
    if backend == "parallel":
        a = attend_parallel(q, q, v, scale, log_g)
    else:  # TBPTT: continue from a state, return the next one (detached by the loop, so no grad)
        a, _ = attend_chunked(q, q, v, scale, state, log_g, chunk_size=C)
    a.square().mean().backward()


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_one(backend, C, B, H, T, N, D, gate="none", reps=2, device="cpu") -> float:
    q, v, log_g = _inputs(B, H, T, N, D, gate, device)
    state = _carried_state(backend, B, H, N, D, device)
    times = []
    for r in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        _step(backend, C, q, v, log_g, state)
        _sync(device)
        if r:  # the first pass is the warm-up
            times.append(time.perf_counter() - t0)
        for x in (q, v, log_g):
            if x is not None:
                x.grad = None
    return min(times)


def memory_mib(backend, C, B, H, T, N, D, gate="none", device="cpu") -> tuple[float, float]:
    """(saved, peak) MiB of one forward+backward beyond the inputs, from a fresh subprocess."""
    args = json.dumps([backend, C, B, H, T, N, D, gate, device])
    code = (
        "import json; from bdh_scale.bench.attention import _memory_here; "
        f"print(*_memory_here(*json.loads({args!r})))"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    saved, peak = out.stdout.split()[-2:]
    return float(saved), float(peak)


def _memory_here(backend, C, B, H, T, N, D, gate, device) -> tuple[float, float]:
    q, v, log_g = _inputs(B, H, T, N, D, gate, device)
    state = _carried_state(backend, B, H, N, D, device)
    inputs = {x.untyped_storage().data_ptr() for x in (q, v, log_g) if x is not None}
    saved = {}

    def pack(x):
        st = x.untyped_storage()
        if st.data_ptr() not in inputs:
            saved[st.data_ptr()] = st.nbytes()
        return x

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # Linux: "5" to clear_refs resets the peak RSS (VmHWM), so the import's peak does not count.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = proc_status_kib("VmRSS") * 1024
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        _step(backend, C, q, v, log_g, state)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else proc_status_kib("VmHWM") * 1024
    return sum(saved.values()) / 2**20, (peak - base) / 2**20


def step_ms(B, H, N, D, window=None, steps=50) -> float:
    """Milliseconds per generated token (T = 1 through attend_chunked, state carried)."""
    q, v = torch.relu(torch.randn(B, H, 1, N)), torch.randn(B, 1, 1, D)
    state = AttnState.zeros(B, H, 1, N, D, window)
    with torch.no_grad():
        for r in range(2):  # the first round warms up
            t0 = time.perf_counter()
            for _ in range(steps):
                _, state = attend_chunked(q, q, v, N**-0.5, state, window=window)
    return (time.perf_counter() - t0) / steps * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--N", type=int, default=2048)
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--gate", choices=["none", "data"], default="none")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mem", action="store_true", help="also measure memory (a subprocess per run)")
    ap.add_argument("--step", action="store_true", help="also time token-by-token generation")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default); 1: steadier on a busy CPU")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"B={a.B} H={a.H} N={a.N} D={a.D} gate={a.gate} {a.device} threads={torch.get_num_threads()}")
    head = f"{'T':>6} {'backend':>10} {'C':>5} {'fwd+bwd s':>10}"
    print(head + (f" {'saved MiB':>10} {'peak MiB':>9}" if a.mem else ""))
    for T in a.T:
        for backend, C in [("parallel", 0)] + [("chunked", C) for C in a.chunks]:
            dims = (a.B, a.H, T, a.N, a.D)
            secs = time_one(backend, C, *dims, a.gate, a.reps, a.device)
            line = f"{T:>6} {backend:>10} {C or '-':>5} {secs:>10.3f}"
            if a.mem:
                line += " {:>10.0f} {:>9.0f}".format(*memory_mib(backend, C, *dims, a.gate, a.device))
            print(line, flush=True)
        print(f"{T:>6} pick_backend -> {pick_backend(T, a.N, a.D)}")
    if a.step:
        for window in (None, 64):
            print(f"generation step, window={window}: {step_ms(a.B, a.H, a.N, a.D, window):.2f} ms/token")


if __name__ == "__main__":
    main()
