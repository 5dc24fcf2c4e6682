"""Stopping when asked, and never outliving the launcher.

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
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time


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
