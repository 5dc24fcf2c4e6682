"""One of two ranks killed with SIGKILL mid-run (the worker, not the launcher): the survivor stops
at once with one line, the run directory stays consistent (lock free, newest checkpoint intact)
and train.resume=auto continues exactly: the losses of an uninterrupted run, step for step."""
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

from bdh_scale.train.checkpoint.checkpointer import list_checkpoints, verify
from tests.helpers.tiny_runs import ROOT, children, clean_env, command, losses, metrics, rank_state, train_process

# 40 steps, so that the kill lands well inside the run; a checkpoint every 3 steps.
RUN = ["train.max_steps=40", "train.checkpoint_every=3", "train.state=carry", "train.batch_size=2",
       "data.prefetch=0", "train.resume=auto", "train.collective_timeout_s=20"]
STOPPED_WITHIN_S = 20  # train.collective_timeout_s: the bound; gloo sees the closed connection in ~3 s


def rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"RANK=")).split(b"=")[1])


def test_a_rank_killed_mid_run_stops_the_other_with_one_line_and_resume_continues_exactly(tmp_path):
    ref = train_process(2, tmp_path, "ref", *RUN)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run_dir = tmp_path / "k"
    proc = subprocess.Popen(command(2, tmp_path, "k", *RUN), cwd=ROOT, env=clean_env(None),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(metrics(run_dir)) < 4:  # past the first checkpoint (step 3)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        (victim,) = [pid for pid in children(proc.pid) if rank_of(pid) == 1]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and took < STOPPED_WITHIN_S, (took, stderr[-3000:])
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]  # the survivor's, once
    assert line.startswith("error: rank 0: another process of the run died or stopped answering")
    assert "train.resume=auto" in line
    last = metrics(run_dir)[-1]["step"]
    assert last < 40  # stopped mid-run

    with open(run_dir / ".lock", "a") as f:  # no process holds the run directory any more
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    newest = list_checkpoints(run_dir)[-1]
    verify(newest)  # every file of it whole, as its manifest says
    step = int(newest.name.split("_")[1])
    assert step >= 3 and step <= last

    resumed = train_process(2, tmp_path, "k", *RUN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{newest.name} at step {step}" in resumed.stdout
    assert losses(run_dir) == losses(tmp_path / "ref")  # bit for bit, every step
    end, ref_end = run_dir / "checkpoints/step_00000040", tmp_path / "ref/checkpoints/step_00000040"
    for rank in (0, 1):
        assert rank_state(end, rank)["lanes"] == rank_state(ref_end, rank)["lanes"]
