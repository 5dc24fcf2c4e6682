"""One training run as the loop drives it: its parts (built in order by setup.py) and where it
stands (step, tokens, carried states). step.py, the reports and the checkpoints read it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from bdh_scale.config import RunConfig
from bdh_scale.data import DataBundle
from bdh_scale.model.bdh.attention import BDHState
from bdh_scale.rundir import Claim
from bdh_scale.train.checkpoint.checkpointer import Checkpointer
from bdh_scale.train.faults.guard import BadStepGuard
from bdh_scale.train.report.diagnostics import MFU
from bdh_scale.train.report.tracking import MetricsLog, SampleTable, Trackers


@dataclass
class Run:
    """One training run: its parts, and where it stands (step, tokens, carried states)."""

    cfg: RunConfig
    accelerator: Accelerator
    precision: str  # the mixed precision in effect (a CPU runs fp32 whatever the recipe asks)
    data: DataBundle
    model: nn.Module  # as prepared by Accelerate (DDP/FSDP wrapper, or the model itself)
    raw_model: nn.Module  # the unwrapped model (BDH, GPT, BDHHRM): init_state, diagnostics, samples
    optimizer: torch.optim.Optimizer  # as prepared by Accelerate
    scheduler: LRScheduler  # the recipe's schedule, stepped once per optimizer step
    run_dir: Path
    checkpoints: Checkpointer
    guard: BadStepGuard
    log: MetricsLog
    trackers: Trackers
    samples: SampleTable
    mfu: MFU
    claim: Claim | None = None  # the run directory's lock, held by the main process until the run ends
    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    tokens: int = 0  # tokens trained on, all ranks
    bad_records: int = 0  # bad records skipped, all ranks (data.on_bad_record=skip; step.take_windows)
    carried: list[BDHState | None] = field(default_factory=list)  # per micro-batch group of lanes: its TBPTT state

    @property
    def carry(self) -> bool:
        return self.cfg.train.state == "carry"

    @property
    def extras(self) -> bool:
        """Whether this process reads the dashboard extras: the main process, from the unwrapped
        model; not under FSDP, where that holds only this rank's shard of every matrix."""
        return self.accelerator.is_main_process and self.accelerator.distributed_type != DistributedType.FSDP
