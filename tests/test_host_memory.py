"""keep_freed_host_memory: once training reaches its steady state, a step's big tensors land in
memory that earlier steps freed, so the kernel no longer zero-fills fresh pages for them (counted
as minor page faults); by default every step faults all of them in again."""
import platform
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from bdh_scale.utils.host_memory import keep_freed_host_memory
tuned = keep_freed_host_memory() if sys.argv[1] == "tuned" else False
from bdh_scale.model import BDH, ModelConfig
torch.manual_seed(0)
# (H, B, T, N) = (2, 16, 256, 2048) floats: 64 MiB neuron tensors, above glibc's mmap threshold
model = BDH(ModelConfig(n_layer=1, n_embd=64, n_head=2, mlp_internal_dim_multiplier=64, dropout=0.0))
idx = torch.randint(0, 256, (16, 257))
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(idx[:, :-1], idx[:, 1:]).loss.backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, *faults)
"""


def step_faults(mode: str) -> tuple[bool, list[int]]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True).stdout
    tuned, *faults = out.split()
    return tuned == "True", [int(n) for n in faults]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc's malloc only")
def test_steady_state_steps_reuse_freed_memory_without_page_faults():
    tuned, faults = step_faults("tuned")
    assert tuned
    _, default = step_faults("default")
    pages = 64 * 2**20 // 4096
    assert min(default[-3:]) > pages  # by default each step maps its big tensors afresh
    # tuned, most steady-state steps never do (an occasional step still grows the heap by one
    # tensor when the machine's other work moves things around)
    quiet = [f for f in faults[-5:] if f < min(default[-3:]) / 10]
    assert len(quiet) >= 3, faults
