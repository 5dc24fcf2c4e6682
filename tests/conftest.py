import pytest
import torch

from bdh_scale.utils.host_memory import keep_freed_host_memory

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
keep_freed_host_memory()  # as the trainer does on a CPU: the suite runs its models faster


@pytest.fixture
def tiny_config():
    from bdh_scale.model import BDHConfig

    def make(**kw):
        base = dict(n_layer=2, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0)
        base.update(kw)
        return BDHConfig(**base)

    return make


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory):
    """A 2-process DDP run (tiny_runs.TWO) on the CPU over gloo: (run directory, CompletedProcess)."""
    from tests.helpers.tiny_runs import TWO, train_process

    out = tmp_path_factory.mktemp("two")
    proc = train_process(2, out, "d", *TWO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    return out / "d", proc
