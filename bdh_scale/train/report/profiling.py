"""train.profile_steps: a torch profiler trace of a few training steps, written into the run
directory through Accelerate's profiler (ProfileKwargs), so a slow step can be looked at op by op.

    python train.py RECIPE train.profile_steps=5 train.profile_from=20

traces steps 21-25 (after one untraced warm-up step) into <run_dir>/profile/: one
`<rank>.<time>.pt.trace.json` per process, a Chrome trace. Open it at https://ui.perfetto.dev (or
chrome://tracing), or point TensorBoard at the directory (`tensorboard --logdir runs/<name>/profile`,
with the torch-tb-profiler plugin). Shapes and memory are recorded.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate.utils import ProfileKwargs

from bdh_scale.train.run import Run

PROFILE = "profile"  # inside the run directory


class _Off:
    def step(self) -> None:
        pass


@contextmanager
def profiling(run: Run, say):
    """A profiler to step once per training step (a no-op one unless train.profile_steps > 0)."""
    tc = run.cfg.train
    if not tc.profile_steps:
        yield _Off()
        return
    out = Path(run.run_dir) / PROFILE
    first = max(tc.profile_from, run.step + 1)  # a resumed run traces from where it is, if it is later
    trace = torch.profiler.tensorboard_trace_handler(str(out), worker_name=f"rank{run.accelerator.process_index}")

    def ready(prof) -> None:
        trace(prof)
        say(f"profile: steps {first + 1}-{first + tc.profile_steps} traced into {out} "
            "(open the .pt.trace.json at https://ui.perfetto.dev, or tensorboard --logdir on the directory)")

    activities = ["cpu"] + (["cuda"] if run.accelerator.device.type == "cuda" else [])
    handler = ProfileKwargs(activities=activities, record_shapes=True, profile_memory=True, on_trace_ready=ready,
                            schedule_option=dict(wait=first - run.step - 1, warmup=1, active=tc.profile_steps,
                                                 repeat=1))
    with run.accelerator.profile(handler) as prof:
        yield prof
