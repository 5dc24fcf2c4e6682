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

A checkpoint written by another number of processes (relay_lanes): with
train.world_size_change=relay (the default) the run keeps the checkpoint's global batch, W x B x A
lanes, and deals the same lanes to its own processes; each lane reads on from where it stopped,
so within the epoch no token is read twice or skipped. The per-process lanes B or the
accumulation steps A change to fit (the micro-batch B is kept where it divides). A carry run's
TBPTT states are then reset: they live with lanes on ranks that no longer exist. With
train.world_size_change=refuse such a resume is refused.
"""
from __future__ import annotations

from pathlib import Path

from bdh_scale.errors import CheckpointError
from bdh_scale.rundir import FINAL, Claim, claim, claim_new
from bdh_scale.train.checkpoint.checkpointer import CHECKPOINTS, find_checkpoint, global_lanes, newest_valid

AUTO = ("auto", "auto_or_fail")


def plan_start(tc, say) -> tuple[Claim, Path | None]:
    """(the claimed run directory, the checkpoint to resume or None). `say` prints one line."""
    base = Path(tc.out_dir) / tc.run_name
    if tc.resume is None:
        return new_run(tc, say), None
    if tc.resume not in AUTO:
        found = find_checkpoint(tc.resume)
        inside = base.resolve() in found.resolve().parents
        return (claim(base) if inside else new_run(tc, say)), found

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
        raise CheckpointError(f"train.resume=auto_or_fail: every checkpoint in {base / CHECKPOINTS} is damaged or "
                              f"unreadable (newest: {skipped[0]}); repair or remove them, or resume with train.resume=auto "
                              "to start a fresh run directory")
    fresh = claim_new(tc.out_dir, tc.run_name)
    if skipped:
        say(f"train.resume={tc.resume}: every checkpoint in {base / CHECKPOINTS} is damaged or unreadable "
            f"(newest: {skipped[0]}); "
            f"starting a fresh run in {fresh.path}, {base} left untouched")
    return fresh, None


def new_run(tc, say) -> Claim:
    """A fresh directory for a new run; when <run_name> is taken, the line that says where this run
    goes instead and how the run already there would be continued."""
    fresh = claim_new(tc.out_dir, tc.run_name)
    if fresh.path.name != tc.run_name:
        say(f"note: {Path(tc.out_dir) / tc.run_name} holds another run, so this one writes {fresh.path}; "
            f"to continue that run instead, train with train.resume=auto (and train.run_name={tc.run_name})")
    return fresh


def relay_lanes(theirs: dict, world_size: int, tc) -> str | None:
    """Fit tc's lanes to a checkpoint's layout `theirs` written by another number of processes
    (module docstring); the line to print, or None when the number of processes is the same.
    CheckpointError when the run may not or cannot continue that way."""
    if theirs["world_size"] == world_size or theirs["state"] != tc.state:  # (a changed state is refused later)
        return None
    lanes = global_lanes(theirs)
    change = f"number of processes: checkpoint {theirs['world_size']}, this run {world_size}"
    if tc.world_size_change == "refuse":
        raise CheckpointError(f"{change}; train.world_size_change=refuse. Resume with {theirs['world_size']} "
                              "processes, or set train.world_size_change=relay to deal the same lanes anew"
                              + ("" if tc.state == "reset" else " (the carried states are then reset)"))
    before = (tc.batch_size, tc.grad_accum_steps)
    if world_size * tc.batch_size * tc.grad_accum_steps != lanes:
        if before != (theirs["batch_size"], theirs["grad_accum_steps"]):
            raise CheckpointError(f"{change}, and train.batch_size x grad_accum_steps changed too; a resume keeps the "
                                  f"checkpoint's global batch of {lanes} lanes: give both so that processes x "
                                  f"batch_size x grad_accum_steps = {lanes}, or neither")
        if lanes % world_size:
            raise CheckpointError(f"{change}: the global batch of {lanes} lanes cannot be dealt evenly to "
                                  f"{world_size} processes; resume with a number of processes that divides {lanes}")
        per = lanes // world_size  # lanes of each process: B' x A'
        B, A = before
        fits = [(B, per // B), (per // A, A), (per, 1)]  # keep the micro-batch, else the accumulation
        tc.batch_size, tc.grad_accum_steps = next((b, a) for b, a in fits if b * a == per)
    said = (f"{change}: the global batch of {lanes} lanes is kept as {world_size} x {tc.batch_size} lanes x "
            f"{tc.grad_accum_steps} micro-batch(es) (train.batch_size {before[0]} -> {tc.batch_size}, grad_accum_steps "
            f"{before[1]} -> {tc.grad_accum_steps}); the lanes are dealt anew and read on where they stopped")
    return said + ("; the carried TBPTT states are reset (train.world_size_change=relay)" if tc.state == "carry" else "")
