import os
import tempfile

import pytest
import torch

# transformers copies the code of every model directory loaded with trust_remote_code into its
# modules cache: the suite's go to a temporary one (read when transformers is first imported)
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="bdh-scale-tests-hf-modules-"))

from bdh_scale.utils.host_memory import keep_freed_host_memory

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
keep_freed_host_memory()  # as the trainer does on a CPU: the suite runs its models faster


@pytest.fixture
def tiny_config():
    from bdh_scale.model import ModelConfig

    def make(**kw):
        base = dict(n_layer=2, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0)
        base.update(kw)
        return ModelConfig(**base)

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


@pytest.fixture(scope="session")
def byte_run(tmp_path_factory):
    """A finished tiny byte-level run (tests/helpers/tiny_runs.py): its run directory."""
    from tests.helpers.tiny_runs import train_in_process

    return train_in_process(tmp_path_factory.mktemp("runs"), "bytes", "train.max_steps=3").run_dir


@pytest.fixture(scope="session")
def bpe_run(tmp_path_factory):
    """A finished tiny run with a BPE tokenizer, trained long enough that greedy samples are words."""
    from tests.helpers.tiny_runs import bpe_tokenizer_file, train_in_process

    tokenizer = bpe_tokenizer_file(tmp_path_factory.mktemp("bpe"))
    return train_in_process(tmp_path_factory.mktemp("runs"), "bpe", "train.max_steps=30",
                            f"data.tokenizer={tokenizer}").run_dir
