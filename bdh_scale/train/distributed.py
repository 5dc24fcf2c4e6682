"""What changes when the same loop runs as several processes (DDP, FSDP, or CPU processes on gloo).

Little does: Accelerate wraps the model (DDP/FSDP) and all-reduces gradients; each rank reads its
own lanes (bdh_scale.data.lanes), so the global batch is W x B lanes x T tokens. What is left is
here: which backend a CPU-only multi-process launch gets, which plans are refused, how ranks agree
on a per-step decision, and how logged throughput is measured across ranks.
"""
from __future__ import annotations

import os

import torch
from accelerate.utils import DistributedType, broadcast_object_list

from bdh_scale.errors import ConfigError


def use_cpu_processes() -> bool:
    """Several processes (WORLD_SIZE > 1) and no GPU: run them on the CPU over gloo.

    `accelerate launch --num_processes 2` (and torchrun) start the workers with WORLD_SIZE set,
    but Accelerate joins them into one group only on a GPU or when told it is on the CPU. Without
    this, two workers on a CPU-only machine would each train alone and write the same files.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def check_parallel_plan(accelerator, tc) -> None:
    """Refuse combinations that cannot work, before any data is read."""
    if accelerator.distributed_type == DistributedType.FSDP and tc.optim == "muon":
        raise ConfigError("train.optim=muon needs whole weight matrices (Newton-Schulz per matrix) but FSDP "
                          "shards them; use train.optim=adamw with FSDP, or DDP (launch/multi_gpu.yaml) with muon")


def any_rank(accelerator, *flags: bool) -> list[bool]:
    """For each flag, whether it is set on any rank: one all-reduce of a few numbers per step."""
    if accelerator.num_processes == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([float(bool(f)) for f in flags], device=accelerator.device)
    t = accelerator.reduce(t, reduction="sum")
    return [bool(v > 0) for v in t.tolist()]


def slowest(accelerator, seconds: float) -> float:
    """The longest of the ranks' times: global tokens/s is the global tokens over the slowest rank."""
    if accelerator.num_processes == 1:
        return seconds
    t = accelerator.gather(torch.tensor([seconds], dtype=torch.float64, device=accelerator.device))
    return float(t.max())


def from_main(accelerator, fn):
    """Run fn() on the main process only and hand its result (or its error) to every rank.

    For decisions that read shared files (which checkpoint to resume, which run directory): one
    process decides, so ranks cannot disagree because one of them saw a half-written file.
    """
    box = [None]
    if accelerator.is_main_process:
        try:
            box = [("ok", fn())]
        except Exception as e:  # re-raised on every rank below
            box = [("error", e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value
