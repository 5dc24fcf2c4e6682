"""Faults the tests inject into a real run, through one hook that costs nothing when unused:

    loss = inject.at("loss", step, loss)      # the step's loss, maybe made NaN or overflowing
    inject.at("after_step", step)             # maybe SIGKILL here
    inject.at("in_checkpoint", step)          # maybe SIGKILL with the checkpoint half written

`arm()` reads the environment once at the start of a run; unless it names a fault, `at` returns
its value after one global read. The variables:

  BDH_INJECT_NAN_AT_STEP=3 or 3,4,5   the loss of those (1-based) steps becomes NaN, on every rank
  BDH_INJECT_OVERFLOW_AT_STEP=3,5     the loss keeps its value but its gradients are scaled by 1e38:
                                      an fp16 loss scaler overflows (inf gradients) on those steps
  BDH_KILL_AT=after_step:5            SIGKILL this process at the end of step 5 (before its checkpoint)
  BDH_KILL_AT=in_checkpoint:6         SIGKILL while the checkpoint of step 6 is half written
"""
from __future__ import annotations

import os
import signal
import sys

import torch

POINTS = ("loss", "after_step", "in_checkpoint")
_armed: "FaultInjection | None" = None


def arm(env=os.environ) -> None:
    """Read the faults of this run from the environment (none: the hook is inert)."""
    global _armed
    faults = FaultInjection.from_env(env)
    _armed = faults if faults.any() else None


def at(point: str, step: int, value=None):
    """The hook: `value` as it is, unless an armed fault names this point and step."""
    if _armed is None:
        return value
    return _armed.fire(point, step, value)


class FaultInjection:
    """Test-only faults from the environment (see the module docstring); inert when unset."""

    OVERFLOW = 1e38  # finite, but past fp32 once a loss scale multiplies the gradients

    def __init__(self, nan_steps: set[int], kill_at: tuple[str, int] | None, overflow_steps: set[int] = frozenset()):
        self.nan_steps = nan_steps
        self.kill_at = kill_at
        self.overflow_steps = overflow_steps

    @classmethod
    def from_env(cls, env=os.environ) -> "FaultInjection":
        def steps(name):
            return {int(s) for s in env.get(name, "").split(",") if s.strip()}

        nan_steps = steps("BDH_INJECT_NAN_AT_STEP")
        kill = env.get("BDH_KILL_AT", "")
        kill_at = None
        if kill:
            where, _, step = kill.partition(":")
            if where not in ("after_step", "in_checkpoint") or not step.isdigit():
                raise ValueError(f"BDH_KILL_AT={kill!r}: expected after_step:N or in_checkpoint:N")
            kill_at = (where, int(step))
        return cls(nan_steps, kill_at, steps("BDH_INJECT_OVERFLOW_AT_STEP"))

    def any(self) -> bool:
        return bool(self.nan_steps or self.kill_at or self.overflow_steps)

    def fire(self, point: str, step: int, value):
        if point == "loss":
            return self.poison(value, step)
        self.kill_point(point, step)
        return value

    def poison(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss, made NaN on the steps of BDH_INJECT_NAN_AT_STEP, and with its value kept but its
        gradient scaled by OVERFLOW on the steps of BDH_INJECT_OVERFLOW_AT_STEP."""
        if step in self.overflow_steps:
            loss = loss + (loss - loss.detach()) * self.OVERFLOW
        return loss * float("nan") if step in self.nan_steps else loss

    def kill_point(self, where: str, step: int) -> None:
        """SIGKILL this process here if BDH_KILL_AT names this point: a crash with no clean-up."""
        if self.kill_at == (where, step):
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
