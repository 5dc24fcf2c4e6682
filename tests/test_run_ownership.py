"""A run directory has one writer, the lock dies with its holder, and workers never outlive their
launcher: real processes, because each property is about processes."""
import os
import signal
import socket
import subprocess
import time

from bdh_scale.train.checkpoint.checkpointer import checkpoint_step, list_checkpoints, verify
from tests.helpers.tiny_runs import (ROOT, alive, children, clean_env, command, metrics, rank_state, start_process,
                                     train_process)

# Trains until stopped; every run resumes whatever the directory holds, as a requeued job would.
ENDLESS = ["train.max_steps=100000", "train.batch_size=2", "data.prefetch=0", "train.resume=auto"]


def wait_for(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_a_second_run_is_refused_while_the_first_lives_and_resumes_once_it_is_killed(tmp_path):
    first = start_process(tmp_path, "r", *ENDLESS, "train.checkpoint_every=2")
    try:
        wait_for(lambda: list_checkpoints(tmp_path / "r") and len(metrics(tmp_path / "r")) >= 3, first)
        second = train_process(1, tmp_path, "r", *ENDLESS, "train.checkpoint_every=2")
        line = one_error_line(second)
        assert f"pid {first.pid}" in line and f"host {socket.gethostname()}" in line and "started" in line
        steps = [r["step"] for r in metrics(tmp_path / "r")]
        assert steps == sorted(set(steps))  # one writer: no step logged twice
    finally:
        first.kill()  # SIGKILL: no clean-up, the lock goes with the process
        first.communicate()
    resume_at = checkpoint_step(list_checkpoints(tmp_path / "r")[-1])
    third = train_process(1, tmp_path, "r", *ENDLESS, f"train.max_steps={resume_at + 1}")
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"at step {resume_at}" in third.stdout


def test_workers_of_a_killed_launcher_save_and_exit_and_hold_the_directory_until_then(tmp_path):
    """kill -9 on the launcher's process group (what a node agent or an impatient user does): the
    workers, in sessions of their own, notice, save a checkpoint together and exit. Until then they
    hold the run directory; afterwards it is free, as for a requeued job."""
    log_out, log_err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    launcher = subprocess.Popen(command(2, tmp_path, "w", *ENDLESS, "train.checkpoint_every=0"), cwd=ROOT,
                                env=clean_env(None), stdout=log_out, stderr=log_err, start_new_session=True)
    try:
        wait_for(lambda: len(metrics(tmp_path / "w")) >= 2, launcher)
        workers = children(launcher.pid)
        assert len(workers) == 2
        busy = train_process(1, tmp_path, "w", *ENDLESS)
        assert any(f"pid {w}" in one_error_line(busy) for w in workers)  # the main worker holds the lock
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 90
        while any(alive(w) for w in workers):
            assert time.monotonic() < deadline, "workers outlived their launcher"
            time.sleep(0.2)
    finally:
        for w in children(launcher.pid) if launcher.poll() is None else []:
            os.kill(w, signal.SIGKILL)
        log_out.close()
        log_err.close()
    err = (tmp_path / "err.txt").read_text()
    # each worker watches the launcher; one noticing is enough: the stop is agreed at the next step
    assert f"the launcher (pid {launcher.pid}) is gone" in err, err[-3000:]
    (ckpt,) = list_checkpoints(tmp_path / "w")
    verify(ckpt)
    step = checkpoint_step(ckpt)
    assert step == metrics(tmp_path / "w")[-1]["step"]  # saved at the step they stopped at
    assert [rank_state(ckpt, r)["lanes"]["batches_served"] for r in (0, 1)] == [step, step]
    requeued = train_process(2, tmp_path, "w", *ENDLESS, f"train.max_steps={step + 1}")
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"at step {step}" in requeued.stdout
