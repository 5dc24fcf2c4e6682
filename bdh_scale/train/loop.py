"""The training story, top to bottom: setup -> steps (log, validate, checkpoint) -> finish.

One loop for every device and every number of processes: Accelerate picks CPU / MPS / CUDA, wraps
the model for DDP or FSDP when launched with several processes (launch/), applies autocast and
the fp16 loss scaler (setup.py). Each step reads the next window of every lane (step.py).

Long runs survive their accidents: checkpoints (checkpoint.py) hold everything needed to continue
bit for bit, non-finite steps are skipped and counted, SIGTERM/SIGINT save before exiting
(faults.py), and data that fails mid-run (a bad record under data.on_bad_record=stop, a file gone,
a host that stopped answering) saves the last completed step and stops with one line. Only the main process writes run files and logs; each rank adds its own lanes and
states to a checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bdh_scale.config import RunConfig
from bdh_scale.errors import DataFailedMidRun
from bdh_scale.rundir import FINAL
from bdh_scale.train.faults import inject
from bdh_scale.train.faults.signals import StopSignals
from bdh_scale.train.final import push_final, save_final
from bdh_scale.train.report.profiling import profiling
from bdh_scale.train.report.progress import Progress
from bdh_scale.train.report.rows import LossWindow, eval_extras, sample, train_row, val_line, validate
from bdh_scale.train.run import Run
from bdh_scale.train.schedule import seq_len_at
from bdh_scale.train.setup import setup
from bdh_scale.train.step import train_step


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    final_val: dict = field(default_factory=dict)
    sample: str = ""
    stopped_by: str | None = None  # "SIGTERM" | "SIGINT" when a signal ended the run (after a checkpoint)


def train(cfg: RunConfig) -> TrainResult:
    run = setup(cfg)
    try:
        return train_run(run)
    finally:
        if run.claim is not None:
            run.claim.release()  # the run directory is free for the next run (also when this one failed)


def train_run(run: Run) -> TrainResult:
    tc, acc = run.cfg.train, run.accelerator
    progress = Progress(tc, run.step, acc.is_main_process, acc.device)
    say = progress.say
    window, started, final_val = LossWindow(), time.perf_counter(), {}
    stopped_by = None
    run.model.train()
    if run.step >= tc.max_steps:
        say(f"nothing to train: resumed at step {run.step}, and train.max_steps={tc.max_steps}; "
            "raise train.max_steps to train on")
    with StopSignals() as signals, profiling(run, say) as profiler:
        while run.step < tc.max_steps:
            T = seq_len_at(run.step, tc.seq_len_schedule, tc.seq_len)
            try:
                step = train_step(run, T, signals, started)
            except DataFailedMidRun as e:
                progress.close()
                raise stop_on_data_fault(run, e) from None
            window.add(step)
            progress.step()
            profiler.step()
            last = run.step >= tc.max_steps or step.time_up
            row = None
            if run.step % tc.log_every == 0 or last or step.stop:
                row = train_row(run, window, step, T, started)
                progress.row(row)
            if tc.eval_batches and ((tc.eval_every and run.step % tc.eval_every == 0) or last) and not step.stop:
                final_val = validate(run)
                row = (row or {"step": run.step, "tokens": run.tokens}) | final_val
                if run.extras:
                    row.update(eval_extras(run))
                say(val_line(run.step, final_val))
            if row is not None:
                run.log.write(row)
                acc.log({k: v for k, v in row.items() if k != "sample"}, step=run.step)  # samples: a table
            inject.at("after_step", run.step)
            if run.checkpoints.due(run.step, at_end=last or step.stop is not None,
                                   in_bad_streak=run.guard.consecutive > 0):
                save_checkpoint(run)
            if step.stop:
                stopped_by = step.stop
                break
            if step.time_up:
                say(f"train.max_time_s={tc.max_time_s} reached at step {run.step}")
                break
    progress.close()
    run.data.close()
    return finish(run, final_val, stopped_by)


def save_checkpoint(run: Run) -> Path:
    """The run's whole state at run.step: weights, optimizer, lanes, carried states, fault counters."""
    return run.checkpoints.save(run.step, run.tokens, run.model, run.optimizer, run.data.train, run.carried,
                                run.guard.state_dict())


def stop_on_data_fault(run: Run, fault: DataFailedMidRun) -> DataFailedMidRun:
    """The data failed mid-run (every rank knows, step.take_windows): save the last completed step,
    which the lanes are back at, and say where it is."""
    ckpt = run.checkpoints
    if run.step == 0:
        saved = "no step was completed, so nothing was saved"
    elif ckpt.due(run.step, at_end=True):
        path = save_checkpoint(run)
        saved = f"saved checkpoint {path} at step {run.step}, the last completed step"
    elif ckpt.last_step == run.step:
        saved = f"the checkpoint of step {run.step}, the last completed step, is {ckpt.last}"
    else:
        saved = f"stopped after step {run.step} without a checkpoint (train.keep_checkpoints=0)"
    run.data.close()
    run.trackers.end()
    return DataFailedMidRun(fault.what, fault.advice, saved)


def finish(run: Run, final_val: dict, stopped_by: str | None) -> TrainResult:
    """Preempted or interrupted: the checkpoint is the result. Otherwise the final weights and a sample."""
    tc, acc = run.cfg.train, run.accelerator
    if stopped_by:
        saved = (f"checkpoint {run.checkpoints.last}" if run.checkpoints.last_step == run.step
                 else "no checkpoint (keep_checkpoints=0)")
        acc.print(f"stopped by {stopped_by} after step {run.step}: {saved}; continue with train.resume=auto")
        run.trackers.end()
        return TrainResult(run.run_dir, run.step, run.tokens, final_val, "", stopped_by)
    if not final_val and tc.eval_batches:  # resumed at or past max_steps: nothing trained, still report where it stands
        final_val = validate(run)
    training = {"run_name": run.run_dir.name, "steps": run.step, "tokens": run.tokens, **final_val}
    # every rank: FSDP gathers the weights
    newest = run.checkpoints.last if run.checkpoints.last_step == run.step else None
    final_model = save_final(acc, run.model, run.cfg, run.run_dir, run.data.tokenizer, training, newest)
    text = ""
    if acc.is_main_process and tc.sample_tokens:
        text = sample(run, final_model.to(acc.device), tc.sample_tokens)
        acc.print(f"--- sample ({tc.sample_tokens} tokens) ---\n{text}\n---")
    if acc.is_main_process and tc.push_to_hub:
        acc.print(push_final(run.run_dir, tc.push_to_hub))
    acc.wait_for_everyone()
    run.trackers.end()
    val = (f"val loss {final_val['val_loss']:.4f} ({final_val['val_bpb']:.4f} bpb)" if final_val
           else "no validation (train.eval_batches=0)")
    acc.print(f"done: {run.step} steps, {run.tokens} tokens, {val}; model in {run.run_dir / FINAL}")
    return TrainResult(run.run_dir, run.step, run.tokens, final_val, text)
