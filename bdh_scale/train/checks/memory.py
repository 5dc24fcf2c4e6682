"""Will one training step fit? Decided from the recipe before the run directory is claimed or a
weight allocated: model.n_embd=65536 or train.seq_len=100000 is refused in a second with what it
would need, instead of taking the machine down minutes later (model/footprint.py counts).

The estimate is compared with what this process can still take (utils/memory.py): the host's
available memory on CPU and MPS, shared by the processes of this machine, the device's free
memory on CUDA. train.memory_check=false skips the refusal for those who know better.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from accelerate.utils import DistributedType

from bdh_scale.errors import ConfigError, UsageError
from bdh_scale.model.footprint import Footprint, training_step
from bdh_scale.utils.memory import available_bytes

GIB = 2**30
# What a process holds beyond its tensors, measured against real steps on CPU (python -m
# bdh_scale.bench.footprint, docs/results/memory_estimate.md): the resident peak was about 1.1-1.5x
# the tensors' bytes with train.host_memory_reuse (glibc keeps freed blocks for the next step), plus
# ~150 MB of libraries and data loaded after start. A low factor is taken, so that the check errs
# towards allowing. CUDA's caching allocator is not measured yet: its factor is left at 1.
HOST_REUSE_FACTOR = 1.15
WORKSPACE = 128 << 20


def tokenizer_vocab(data_cfg, fallback: int) -> int:
    """The vocabulary the run's tokenizer will give the model (the embedding and the logits grow
    with it), read without building the data; `fallback` when it cannot be told yet."""
    from bdh_scale.data.sources.shards import META_FILE, read_meta
    from bdh_scale.data.tokenize.tokenizer import load_tokenizer

    sources = [data_cfg.source] if data_cfg.sources is None else [e.get("source", "") for e in data_cfg.sources]
    try:
        for source in sources:  # a shard dir gives its own tokenizer (a mixture's: all the same)
            if (Path(source).expanduser() / META_FILE).is_file():
                return int(read_meta(Path(source).expanduser())["vocab_size"])
        return load_tokenizer(data_cfg.tokenizer).vocab_size
    except (UsageError, OSError, KeyError, TypeError, ValueError):
        return fallback  # a tokenizer that cannot be read is refused, in its own words, when the data is built


def step_footprint(cfg, accelerator, precision: str) -> Footprint:
    """One process's estimate for this run's largest step (its longest window)."""
    tc, W = cfg.train, accelerator.num_processes
    model = dataclasses.replace(cfg.model, vocab_size=tokenizer_vocab(cfg.data, cfg.model.vocab_size))
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    T = max([tc.seq_len] + [T for _, T in tc.seq_len_schedule or []])
    tensors = training_step(model, tc.batch_size, T, optim=tc.optim, precision=precision,
                            checkpointing=tc.gradient_checkpointing, carry=tc.state == "carry",
                            bptt_windows=tc.bptt_windows, grad_accum=tc.grad_accum_steps,
                            shards=W if fsdp else 1, ddp=W > 1 and not fsdp)
    factor = HOST_REUSE_FACTOR if accelerator.device.type == "cpu" and tc.host_memory_reuse else 1.0
    extra = (factor - 1) * (tensors.fixed + tensors.activations) + WORKSPACE
    return dataclasses.replace(tensors, overhead=int(extra))


def check_memory(cfg, accelerator, precision: str) -> str:
    """The line saying what a step needs against what there is; ConfigError when it cannot fit."""
    need = step_footprint(cfg, accelerator, precision)
    room, bound = available_bytes(accelerator.device)
    device = accelerator.device
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type != "cuda" and local > 1:  # the processes of this machine share its memory
        room, bound = room // local, f"{bound}, shared by {local} processes"
    line = f"memory: a step needs about {need.describe()} per process; {room / GIB:,.1f} GiB {bound}"
    if need.total > room and cfg.train.memory_check:
        tc = cfg.train
        raise ConfigError(
            f"train: one step of this run needs about {need.describe()} per process ({need.params / 1e6:,.1f}M "
            f"parameters, {tc.batch_size} lanes x {max(tc.lengths())} tokens), and {device} has "
            f"{room / GIB:,.1f} GiB {bound}; lower train.batch_size or train.seq_len, set "
            "train.gradient_checkpointing=true, use a smaller model, or set train.memory_check=false to try anyway")
    return line
