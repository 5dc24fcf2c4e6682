"""What goes wrong in a long run, and what the loop does about it.

Non-finite steps (BadStepGuard). A step is bad when its loss or its gradient norm is NaN/inf on
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

Preemption (StopSignals). SIGTERM (cluster preemption, scancel) and SIGINT (Ctrl-C) only set a
flag; the loop finishes the current step, agrees on the flag across ranks, saves a checkpoint
and returns. The CLI then exits 0 after SIGTERM (the run stopped as asked and is resumable with
train.resume=auto; a requeue is the scheduler's business) and 130 after SIGINT (the shell's
convention for Ctrl-C). Launchers (accelerate launch / torchrun) forward the signal to every
worker, often twice; a third signal raises KeyboardInterrupt at once, without saving.

Orphans (watch_launcher). A worker started by a launcher (accelerate launch / torchrun) must not
outlive it: a launcher killed with SIGKILL forwards nothing, and its workers would go on training
and writing checkpoints with no one to stop them. A daemon thread watches the parent process;
when it is gone, the worker sends itself SIGTERM (so it finishes its step and saves, as on
preemption; the other workers see the same and they agree on the stop) and exits at once if that
has not ended it within ORPHAN_GRACE_S (a peer may be gone too, and a collective would wait for it).

Fault injection for tests (FaultInjection), read from the environment at the start of a run:
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
import threading
import time

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


class StopSignals:
    """Context manager: SIGTERM / SIGINT set `requested` ("SIGTERM" | "SIGINT") instead of killing.

    Handlers are installed only in the main thread (Python allows no other) and the previous ones
    are restored on exit, so train() called from a test or a notebook leaves no trace.
    """

    FORCE_AFTER = 3  # the third signal stops at once (the launcher forwards one, the user sent one)

    def __init__(self):
        self.requested: str | None = None
        self.count = 0
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count >= self.FORCE_AFTER:
            raise KeyboardInterrupt(f"{name} received {self.count} times: stopping without a checkpoint")
        if self.requested is None:
            self.requested = name
            print(f"{name} received: stopping after this step and saving a checkpoint "
                  f"(signal {self.FORCE_AFTER - self.count} more time(s) to stop at once)",
                  file=sys.stderr, flush=True)


ORPHAN_GRACE_S = 120.0  # an orphaned worker saves within this, or exits without saving


def launched_worker() -> bool:
    """Whether this process is a worker of torch elastic (torchrun, accelerate launch with
    several processes): the processes a launcher starts in sessions of their own."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def watch_launcher(poll_s: float = 0.5, grace_s: float = ORPHAN_GRACE_S) -> threading.Thread | None:
    """Start the orphan watch (see the module docstring) when this is a launched worker."""
    if not launched_worker():
        return None
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"rank {os.environ.get('RANK', '?')}: the launcher (pid {parent}) is gone; saving a checkpoint and "
              "stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        print(f"rank {os.environ.get('RANK', '?')}: not stopped {grace_s:.0f} s after the launcher died; exiting "
              "without a checkpoint", file=sys.stderr, flush=True)
        os._exit(1)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread


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
