"""Schedules over optimizer steps: the learning rate (linear warmup, then cosine decay to a floor,
or warmup-stable-decay, or constant) and the sequence-length curriculum (seq_len_at).

train.lr_schedule:
    cosine    warmup, then a cosine from lr down to min_lr at max_steps (the default)
    wsd       warmup, lr held until the last lr_decay_fraction of max_steps, then a linear decay to
              min_lr (warmup-stable-decay, as in MiniCPM; a run can be extended from a stable-phase
              checkpoint and cooled down later)
    constant  warmup, then lr

The schedule is written once as a plain function of the step (`lr_at`, easy to test and to
log) and applied to an optimizer as a *multiplier* `lr_at(step) / lr` (`make_scheduler`).
The multiplier form matters for the Muon optimizer: its matrix groups run at a different
base lr (e.g. 0.02) than its AdamW groups (e.g. 1e-3), and a multiplier scales every param
group's own base lr by the same warmup/decay shape, so the floor of each group is
`base_lr * min_lr / lr`.
"""
from __future__ import annotations

import math

import torch


def _check(lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> None:
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= min_lr <= lr:
        raise ValueError(f"min_lr must be in [0, lr={lr}], got {min_lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if max_steps < warmup_steps:
        raise ValueError(f"max_steps ({max_steps}) must be >= warmup_steps ({warmup_steps})")


SHAPES = ("cosine", "wsd", "constant")


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int, shape: str = "cosine",
          decay_fraction: float = 0.2) -> float:
    """The learning rate for optimizer step `step` (0-based), of schedule `shape` (SHAPES).

    Warmup is `lr * (step + 1) / (warmup_steps + 1)` (nanoGPT's form): small but non-zero at
    step 0, so the first update is not wasted, and exactly `lr` at `step == warmup_steps`.
    Cosine decay then reaches `min_lr` at `step == max_steps` and stays there, so a run that
    goes past max_steps (e.g. extended on resume) trains on at the floor instead of rising.
    """
    _check(lr, min_lr, warmup_steps, max_steps)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if shape == "constant":
        return lr
    if step >= max_steps:
        return min_lr
    if shape == "wsd":
        decay_from = max(warmup_steps, max_steps - round(decay_fraction * max_steps))
        if step < decay_from:
            return lr
        return lr - (lr - min_lr) * (step - decay_from) / max(max_steps - decay_from, 1)
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    max_steps: int,
    step: int = 0,
    shape: str = "cosine",
    decay_fraction: float = 0.2,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor is `lr_at(step) / lr`, applied to each group's base lr, starting at
    optimizer step `step` (0: a new run; k: a run resumed after k steps).

    Call `scheduler.step()` once per optimizer step. The schedule is a function of the step and the
    recipe only, so a checkpoint keeps no scheduler state: a resumed run builds its scheduler from
    the recipe it runs with (a new lr, a longer max_steps) at the checkpoint's step, and each
    group's current lr is taken as its base.
    """
    _check(lr, min_lr, warmup_steps, max_steps)

    def factor(i: int) -> float:
        return lr_at(i, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps, shape=shape,
                     decay_fraction=decay_fraction) / lr

    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    # LambdaLR steps once on construction: last_epoch step - 1 puts it at `step`.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=step - 1)


# -- sequence-length curriculum ----------------------------------------------------------------
# train.seq_len_schedule = [[step, T], ...]: "from optimizer step `step` on, use windows of T
# tokens" (checked by TrainConfig). Lanes stay contiguous when T changes (each lane just reads
# its next T+1 tokens), so the curriculum never skips or repeats data.

def seq_len_at(step: int, schedule: list | None, default: int) -> int:
    """Window length T at optimizer step `step` (0-based): the schedule's, or `default` (train.seq_len)."""
    T = default
    for start, t in schedule or []:
        if step >= start:
            T = t
        else:
            break
    return int(T)


def sample_context(tc) -> int | None:
    """How much context a sample of a run may use: a model trained on independent windows (state:
    reset) has only seen states built from at most one window, so its samples keep to that (the
    last window of a curriculum); a carried state has seen whole streams."""
    return seq_len_at(tc.max_steps, tc.seq_len_schedule, tc.seq_len) if tc.state == "reset" else None
