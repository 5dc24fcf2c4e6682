"""Non-finite steps (BadStepGuard). A step is bad when its loss or its gradient norm is NaN/inf on
any rank (the loop agrees on that with one small all-reduce, so every rank skips together and
the replicas never diverge).
  * fp32 / bf16: a bad step is skipped here: no optimizer step, gradients zeroed, counted.
  * fp16: optimizer.step() always runs, because the GradScaler must see the overflow: it skips
    the update itself (accelerator.optimizer_step_was_skipped) and halves its scale. Overflow
    while the scale is still >= 1 is the scaler calibrating and is only counted (overflows); it
    is bad when the loss itself is non-finite or the scale has fallen below 1 (the gradients
    overflow even unscaled: no scale can fix that).
  * max_bad_steps bad steps in a row raise TrainingStopped. A skipped step changes neither the
    weights nor the optimizer state, and no checkpoint is written during a bad streak, so the
    newest checkpoint is the last good one.
  * A bad step's carried TBPTT state may itself be NaN: those lanes are reset (reset_nonfinite_lanes).
"""
from __future__ import annotations

import torch

from bdh_scale.errors import TrainingStopped
from bdh_scale.utils.tree import tensors


class BadStepGuard:
    """Decides, per step, whether the optimizer may step; counts bad steps; stops after too many."""

    def __init__(self, max_bad_steps: int, scaler=None, last_checkpoint=lambda: None):
        self.max_bad_steps = max_bad_steps
        self.scaler = scaler  # accelerator.scaler: a GradScaler under fp16, else None
        self.last_checkpoint = last_checkpoint  # () -> the newest checkpoint written or resumed, or None
        self.consecutive = 0  # bad steps in a row, up to the current one
        self.total = 0  # bad steps in the whole run
        self.overflows = 0  # fp16 steps the scaler skipped while calibrating (not bad)
        self.first_bad = 0  # the first step of the current streak

    def may_step(self, loss_bad: bool, grads_bad: bool) -> bool:
        """Whether to call optimizer.step(): always with a loss scaler (it skips by itself)."""
        return self.scaler is not None or not (loss_bad or grads_bad)

    def record(self, step: int, loss_bad: bool, grads_bad: bool, scaler_skipped: bool = False) -> bool:
        """Count step `step` (1-based); True if it was bad. Raises TrainingStopped on the
        max_bad_steps-th bad step in a row."""
        if self.scaler is not None:
            bad = loss_bad or (scaler_skipped and self.scaler.get_scale() < 1.0)
            if scaler_skipped and not bad:
                self.overflows += 1
                return False
        else:
            bad = loss_bad or grads_bad
        if not bad:
            self.consecutive = 0
            return False
        self.total += 1
        self.consecutive += 1
        if self.consecutive == 1:
            self.first_bad = step
        if self.consecutive >= self.max_bad_steps:
            last = self.last_checkpoint()
            advice = (f"the newest checkpoint, {last}, is the last good one: resume from it (train.resume=auto) "
                      "with a lower train.lr or train.grad_clip" if last is not None else
                      "no checkpoint was written before them: start again with a lower train.lr or train.grad_clip")
            raise TrainingStopped(f"train.max_bad_steps={self.max_bad_steps}: steps {self.first_bad}-{step} all had "
                                  f"a non-finite loss or gradient; stopped without saving; {advice}")
        return True

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total, "overflows": self.overflows,
                "first_bad": self.first_bad}

    def load_state_dict(self, d: dict) -> None:
        self.consecutive, self.total = int(d["consecutive"]), int(d["total"])
        self.overflows, self.first_bad = int(d["overflows"]), int(d["first_bad"])


def nonfinite_lanes(state) -> torch.Tensor | None:
    """(B,) bool: lanes whose carried state holds a NaN or inf; None for an empty state."""
    mask = None
    for x in tensors(state.state_dict()):
        if x.dim() >= 1 and x.is_floating_point():
            m = ~torch.isfinite(x).reshape(x.size(0), -1).all(dim=1)
            mask = m if mask is None else mask | m
    return mask


def reset_nonfinite_lanes(state):
    """Zero the carried state of the lanes that went non-finite (their stream starts afresh)."""
    if state is not None:
        mask = nonfinite_lanes(state)
        if mask is not None and bool(mask.any()):
            state.reset_(mask)
    return state
