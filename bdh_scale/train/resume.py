"""Which checkpoint a run continues from and which directory it writes, decided on the main process
while it holds that directory's lock (rundir.py), before anything is written.

    train.resume=null          a new run: <out_dir>/<run_name>, or the first free <run_name>-<i>
    train.resume=auto          the newest valid checkpoint of <out_dir>/<run_name>, in that directory.
                               With no checkpoint there yet, the same directory (a job requeued before
                               its first checkpoint), unless a finished run is there: then a new one.
                               When it has checkpoints and every one is damaged, one line says so and
                               the run starts afresh in a new directory, leaving the old one untouched.
    train.resume=auto_or_fail  as auto, but a directory whose checkpoints are all damaged is refused
    train.resume=<path>        that checkpoint, or the newest valid one of that run directory; refused
                               when damaged. The run goes on in <out_dir>/<run_name> when the checkpoint
                               lives there, else in a new directory (a fork).
"""
from __future__ import annotations

from pathlib import Path

from bdh_scale.errors import CheckpointError
from bdh_scale.rundir import FINAL, Claim, claim, claim_new
from bdh_scale.train.checkpoint import CHECKPOINTS, find_checkpoint, newest_valid

AUTO = ("auto", "auto_or_fail")


def plan_start(tc, say) -> tuple[Claim, Path | None]:
    """(the claimed run directory, the checkpoint to resume or None). `say` prints one line."""
    base = Path(tc.out_dir) / tc.run_name
    if tc.resume is None:
        return claim_new(tc.out_dir, tc.run_name), None
    if tc.resume not in AUTO:
        found = find_checkpoint(tc.resume)
        inside = base.resolve() in found.resolve().parents
        return (claim(base) if inside else claim_new(tc.out_dir, tc.run_name)), found

    held = claim(base)  # first: a checkpoint being written or pruned by another run is not read
    try:
        found, skipped = newest_valid(base)
    except BaseException:
        held.abandon()
        raise
    for why in skipped if found is not None else []:
        say(f"warning: {why}; resuming from the older {found.name}")
    if found is not None:
        return held, found
    if not skipped and not (base / FINAL).exists():
        return held, None  # nothing saved yet: the same run starts over in its own directory
    held.abandon()
    if skipped and tc.resume == "auto_or_fail":
        raise CheckpointError(f"train.resume=auto_or_fail: every checkpoint in {base / CHECKPOINTS} is damaged "
                              f"(newest: {skipped[0]}); repair or remove them, or resume with train.resume=auto "
                              "to start a fresh run directory")
    fresh = claim_new(tc.out_dir, tc.run_name)
    if skipped:
        say(f"train.resume={tc.resume}: every checkpoint in {base / CHECKPOINTS} is damaged (newest: {skipped[0]}); "
            f"starting a fresh run in {fresh.path}, {base} left untouched")
    return fresh, None
