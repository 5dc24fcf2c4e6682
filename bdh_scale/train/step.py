"""One optimizer step: the windows of every lane (on a data fault, every rank stops before any
forward: take_windows), forward and backward over the micro-batches of this rank's lanes and
train.bptt_windows windows of each, the carried states detached after the last (truncated BPTT),
then one agreed decision across ranks: step, or skip a non-finite step (faults.py), and whether
to stop.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate.utils import gather_object

from bdh_scale.data.lanes import Lanes
from bdh_scale.errors import DataFailedMidRun
from bdh_scale.model.output import IGNORE
from bdh_scale.train.distributed import any_rank, full_value
from bdh_scale.train.faults import inject
from bdh_scale.train.faults.guard import reset_nonfinite_lanes
from bdh_scale.train.faults.signals import StopSignals
from bdh_scale.train.run import Run


@dataclass
class StepResult:
    loss: torch.Tensor  # mean loss of the step on this rank (a 0-dim tensor, not synchronized)
    lr: float  # the learning rate of the step (the first param group's)
    grad_norm: torch.Tensor
    bad: bool  # non-finite: skipped and counted
    tokens: int  # tokens of the step, all ranks
    stop: str | None  # "SIGTERM" | "SIGINT" when a signal asked to stop (on any rank)
    time_up: bool  # train.max_time_s reached (on any rank)


def pooled(losses: list, counts: list) -> torch.Tensor:
    """The mean over the scored targets of several windows, from each window's mean and count;
    one window's loss as it is."""
    if len(losses) == 1:
        return losses[0]
    total = torch.stack(counts).sum()
    return sum(l * n for l, n in zip(losses, counts)) / total.clamp(min=1)


def take_windows(run: Run, T: int, k: int) -> list:
    """The step's k windows of every lane. Stream lanes can fail (a bad record under
    data.on_bad_record=stop, a file gone, the network retries spent; data/lanes/stream.py): every
    rank learns of it, and of the bad records skipped in all against data.max_bad_records, from one
    small all-reduce before any forward (a collective a failed rank skipped would wait forever);
    then every rank puts its lanes back to the last completed step and raises the same DataFailedMidRun."""
    lanes: Lanes = run.data.train
    if not lanes.can_fail:  # lanes over tokens already at hand: no collective needed
        return lanes.next_batches(T, k)
    fault, batches = None, None
    try:
        batches = lanes.next_batches(T, k)
    except DataFailedMidRun as e:
        fault = e
    acc = run.accelerator
    failed, total = fault is not None, lanes.bad.count
    if acc.num_processes > 1:
        t = acc.reduce(torch.tensor([float(failed), float(total)], device=acc.device), reduction="sum")
        failed, total = t[0].item() > 0, int(t[1].item())
        if failed:  # said once, by every rank alike: the lowest failed rank's fault
            fault = next(DataFailedMidRun(*f) for f in gather_object([(fault.what, fault.advice) if fault else None]) if f)
    run.bad_records = total
    fault = fault or lanes.bad.past_cap(total)
    if fault is not None:
        lanes.fail(fault)
        raise fault
    return batches


def train_step(run: Run, T: int, signals: StopSignals, started: float) -> StepResult:
    """Advance `run` by one optimizer step: train.bptt_windows consecutive windows of T tokens per lane.

    With k = train.bptt_windows > 1 the graph runs through the carried state over the k windows
    and the loss is the mean over all their scored targets, so the gradient is that of one
    forward over the k windows; the state is detached after the last (docs/design.md, "Backprop
    through several windows"). Under DDP only the last forward of the step's last micro-batch
    arms the gradient all-reduce: every parameter's gradient is then reduced once, in the one
    backward that follows.
    """
    tc, acc = run.cfg.train, run.accelerator
    batches = take_windows(run, T, tc.bptt_windows)
    step_loss = 0.0
    for micro in range(tc.grad_accum_steps):
        rows = slice(micro * tc.batch_size, (micro + 1) * tc.batch_size)
        # Sync gradients across ranks only on the last micro-batch of the step.
        sync = micro == tc.grad_accum_steps - 1
        carried = run.carried[micro] if run.carry else None
        losses, counts = [], []
        for w, batch in enumerate(batches):
            x = batch.x[rows].to(acc.device, non_blocking=True)  # pinned when data.pin_memory
            y = batch.y[rows].to(acc.device, non_blocking=True)
            # a document's first token reads a fresh state (data.doc_reset; docs/design.md)
            doc_start = batch.doc_start[rows].to(acc.device) if run.data.doc_reset else None
            if run.carry:
                carried = carried or run.raw_model.init_state(tc.batch_size, acc.device)
                carried.reset_(batch.restarted[rows].to(acc.device))  # lanes that (re)started their stretch
            with nullcontext() if sync and w == len(batches) - 1 else acc.no_sync(run.model):
                out = run.model(x, y, state=carried, return_state=run.carry, doc_start=doc_start)
            carried = out.state  # with its graph: the next window of this step backpropagates into it
            losses.append(out.loss)
            counts.append((y != IGNORE).sum())
        loss = inject.at("loss", run.step + 1, pooled(losses, counts))
        with nullcontext() if sync else acc.no_sync(run.model):
            acc.backward(loss / tc.grad_accum_steps)
        if run.carry:
            run.carried[micro] = carried.detach()  # truncated BPTT: the next step sees values, not graph
        step_loss += loss.detach().float() / tc.grad_accum_steps

    # The norm is always measured (max_norm inf when clipping is off): it is the check. Ranks agree
    # on every decision that ends or skips a step, in one small all-reduce.
    grad_norm = full_value(acc.clip_grad_norm_(run.model.parameters(), tc.grad_clip or math.inf))
    out_of_time = tc.max_time_s is not None and time.perf_counter() - started >= tc.max_time_s
    loss_bad, grads_bad, time_up, sigterm, sigint = any_rank(
        acc, not torch.isfinite(step_loss), not torch.isfinite(grad_norm), out_of_time,
        signals.requested == "SIGTERM", signals.requested == "SIGINT")
    lr = run.optimizer.param_groups[0]["lr"]
    if run.guard.may_step(loss_bad, grads_bad):
        run.optimizer.step()
    bad = run.guard.record(run.step + 1, loss_bad, grads_bad, acc.optimizer_step_was_skipped)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if bad and run.carry:
        run.carried = [reset_nonfinite_lanes(s) for s in run.carried]
    run.step += 1
    tokens = sum(b.x.numel() for b in batches) * acc.num_processes
    run.tokens += tokens
    stop = "SIGINT" if sigint else "SIGTERM" if sigterm else None
    return StepResult(step_loss, lr, grad_norm, bad, tokens, stop, time_up)
