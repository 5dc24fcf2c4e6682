"""The training story, top to bottom: config -> data -> model -> Accelerate -> resume -> steps ->
eval -> checkpoint -> save.

One loop for every device and every number of processes: Accelerate picks CPU / MPS / CUDA, wraps
the model for DDP or FSDP when launched with several processes (launch/), applies autocast and
the fp16 loss scaler. Data is not passed through accelerator.prepare: every rank builds its own
disjoint lanes (bdh_scale.data), so the global batch is processes x B lanes x T tokens and nothing
is re-split or duplicated. The carried TBPTT states of a lane live on the rank that owns the lane.

Long runs survive their accidents: checkpoints (checkpoint.py) hold everything needed to continue
bit for bit, non-finite steps are skipped and counted, SIGTERM/SIGINT save before exiting
(faults.py). Only the main process writes run files and logs; each rank adds its own lanes and
states to a checkpoint.
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data import build_data
from ..data.curriculum import seq_len_at
from ..host_memory import keep_freed_host_memory
from ..model import build_model
from .checkpoint import Checkpointer, resolve_resume
from .distributed import any_rank, check_parallel_plan, slowest, use_cpu_processes
from .evaluate import evaluate
from .faults import BadStepGuard, FaultInjection, StopSignals, reset_nonfinite_lanes
from .optim import build_optimizer
from .precision import resolve_mixed_precision
from .rundir import METRICS, prepare_run_dir, save_final
from .schedule import make_scheduler
from .diagnostics import MFU, activation_and_state, carried_rho_norms, sample_context, sample_text
from .tracking import MetricsLog, SampleTable, accelerate_log_with, init_trackers


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    final_val: dict = field(default_factory=dict)
    sample: str = ""
    stopped_by: str | None = None  # "SIGTERM" | "SIGINT" when a signal ended the run (after a checkpoint)


def train(cfg: RunConfig) -> TrainResult:
    tc = cfg.train
    cpu = use_cpu_processes()  # several processes on a machine without GPUs: gloo on the CPU
    state = PartialState(cpu=cpu)
    precision, notice = resolve_mixed_precision(tc.mixed_precision, state.device)
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, log_with=accelerate_log_with(cfg.tracking))
    check_parallel_plan(accelerator, tc)
    if notice:
        accelerator.print(notice)
    if tc.host_memory_reuse and accelerator.device.type == "cpu":
        keep_freed_host_memory()  # big tensors would otherwise page-fault in on every step
    set_seed(tc.seed, device_specific=True)  # dropout differs across ranks; data order does not

    # -- data: this rank's lanes; micro-batches of one step are disjoint groups of lanes --------
    lanes_per_rank = tc.batch_size * tc.grad_accum_steps
    longest_T = max([tc.seq_len] + [T for _, T in tc.seq_len_schedule or []])
    data = build_data(cfg.data, batch_size=lanes_per_rank, world_size=accelerator.num_processes,
                      rank=accelerator.process_index, seed=tc.seed, seq_len=longest_T)
    if cfg.model.vocab_size != data.tokenizer.vocab_size:
        accelerator.print(f"model.vocab_size set to {data.tokenizer.vocab_size} by the tokenizer {data.tokenizer.name}")
        cfg.model.vocab_size = data.tokenizer.vocab_size

    # -- model and optimizer -----------------------------------------------------------------
    model = build_model(cfg.model)
    model.gradient_checkpointing = tc.gradient_checkpointing  # non-reentrant: safe under DDP
    if tc.compile:
        # In place (nn.Module.compile): parameter names, state_dict and checkpoints stay those of
        # the eager model, and DDP/FSDP wrap it as usual. Each new window length compiles once.
        model.compile()
    # Fused AdamW (one kernel for all parameters) exists for CPU and CUDA. Not with fp16: the loss
    # scaler then always calls the fused step (which skips inside), and Accelerate could no longer
    # tell a skipped step (optimizer_step_was_skipped) from a taken one.
    fused = accelerator.device.type in ("cpu", "cuda") and tc.optim == "adamw" and accelerator.scaler is None
    optimizer = build_optimizer(model, name=tc.optim, lr=tc.lr, weight_decay=tc.weight_decay,
                                betas=(tc.beta1, tc.beta2), muon_lr=tc.muon_lr, fused=fused or None)
    # A short run (max_steps below warmup_steps) warms up over all of its steps.
    scheduler = make_scheduler(optimizer, lr=tc.lr, min_lr=tc.min_lr, warmup_steps=min(tc.warmup_steps, tc.max_steps),
                               max_steps=tc.max_steps)
    # The schedule follows loop steps, skipped ones included (faults.py): torch's warning about a
    # scheduler step without an optimizer step is expected when the first step is skipped.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: Accelerate's scheduler wrapper would step it once per process. Registered, so
    # that save_state/load_state carry it.
    accelerator.register_for_checkpointing(scheduler)
    raw_model = accelerator.unwrap_model(model)

    # -- the run directory, and where to continue from (train.resume) ----------------------------
    resume_from = resolve_resume(tc, accelerator)
    run_dir = prepare_run_dir(cfg, accelerator, data.tokenizer, resume_from)
    log = MetricsLog(run_dir / METRICS, accelerator.is_main_process)
    init_trackers(accelerator, cfg.tracking, run_dir, run_dir.name, cfg.to_dict())
    inject = FaultInjection.from_env()  # test-only faults; inert unless BDH_* variables are set
    checkpoints = Checkpointer(run_dir, accelerator, cfg, data.tokenizer, inject)
    guard = BadStepGuard(tc.max_bad_steps, accelerator.scaler, checkpoint_dir=str(checkpoints.root))
    carry = tc.state == "carry"
    states = [None] * tc.grad_accum_steps  # one carried state per micro-batch group of lanes
    step, tokens_seen = 0, 0
    if resume_from is not None:
        resumed = checkpoints.load(resume_from, data.train, raw_model)
        step, tokens_seen, states = resumed.step, resumed.tokens, resumed.states
        guard.load_state_dict(resumed.faults)
    n_params = raw_model.num_params()
    mfu = MFU(cfg.model, accelerator.device, precision, accelerator.num_processes, cfg.tracking.peak_tflops)
    samples = SampleTable(accelerator, cfg.tracking)
    # The extras read the unwrapped model on the main process alone: not under FSDP, where it holds
    # only this rank's shard of every matrix.
    extras = accelerator.is_main_process and accelerator.distributed_type != DistributedType.FSDP
    accelerator.print(f"run {run_dir} | {cfg.model.arch} {n_params / 1e6:.2f}M params | "
                      f"{accelerator.num_processes} process(es) on {accelerator.device} | precision {precision}"
                      + (f" | resumed from {resume_from} at step {step}" if resume_from is not None else ""))

    # -- the steps ------------------------------------------------------------------------------
    eval_T = tc.eval_seq_len or tc.seq_len
    eval_rows = lanes_per_rank * accelerator.num_processes  # global: the same figure for any layout
    window_loss, window_n, window_tokens, window_t0 = 0.0, 0, 0, time.perf_counter()
    start = time.perf_counter()
    final_val: dict = {}
    stopped_by = None
    bar = tqdm(total=tc.max_steps, initial=min(step, tc.max_steps), dynamic_ncols=True, desc="train",
               disable=not (tc.progress and accelerator.is_local_main_process))
    say = bar.write if accelerator.is_main_process else (lambda *args, **kwargs: None)
    model.train()
    with StopSignals() as signals:
        while step < tc.max_steps:
            T = seq_len_at(step, tc.seq_len_schedule) if tc.seq_len_schedule else tc.seq_len
            x_all, y_all, restarted_all = data.train.next_batch(T)
            step_loss = 0.0
            for micro in range(tc.grad_accum_steps):
                rows = slice(micro * tc.batch_size, (micro + 1) * tc.batch_size)
                x = x_all[rows].to(accelerator.device, non_blocking=True)  # pinned when data.pin_memory
                y = y_all[rows].to(accelerator.device, non_blocking=True)
                s = None
                if carry:
                    s = states[micro] or raw_model.init_state(tc.batch_size, accelerator.device)
                    s.reset_(restarted_all[rows].to(accelerator.device))
                # Sync gradients across ranks only on the last micro-batch of the step.
                sync = micro == tc.grad_accum_steps - 1
                with nullcontext() if sync else accelerator.no_sync(model):
                    out = model(x, y, state=s, return_state=carry)
                    loss = inject.poison(out.loss, step + 1)
                    accelerator.backward(loss / tc.grad_accum_steps)
                if carry:
                    states[micro] = out.state.detach()  # truncated BPTT: the next window sees values, not graph
                step_loss += loss.detach().float() / tc.grad_accum_steps

            # One optimizer step, unless the step went non-finite on some rank (faults.py). The
            # norm is always measured (max_norm inf when clipping is off): it is the check.
            # Ranks agree on every decision that ends or skips a step, in one small all-reduce.
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
            out_of_time = tc.max_time_s is not None and time.perf_counter() - start >= tc.max_time_s
            loss_bad, grads_bad, time_up, sigterm, sigint = any_rank(
                accelerator, not torch.isfinite(step_loss), not torch.isfinite(grad_norm), out_of_time,
                signals.requested == "SIGTERM", signals.requested == "SIGINT")
            if guard.may_step(loss_bad, grads_bad):
                optimizer.step()
            bad = guard.record(step + 1, loss_bad, grads_bad, accelerator.optimizer_step_was_skipped)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if bad and carry:
                states = [reset_nonfinite_lanes(s) for s in states]
            step += 1

            tokens_per_step_global = x_all.numel() * accelerator.num_processes
            tokens_seen += tokens_per_step_global
            if not bad:
                window_loss += step_loss
                window_n += 1
            window_tokens += tokens_per_step_global
            bar.update(1)

            stop = "SIGINT" if sigint else "SIGTERM" if sigterm else None
            last = step >= tc.max_steps or time_up
            record = None
            if step % tc.log_every == 0 or last or stop:
                mean = window_loss / window_n if window_n else torch.tensor(float("nan"))
                loss = accelerator.reduce(torch.as_tensor(mean, device=accelerator.device), reduction="mean").item()
                elapsed = slowest(accelerator, time.perf_counter() - window_t0)
                record = {"step": step, "tokens": tokens_seen, "loss": loss, "lr": scheduler.get_last_lr()[0],
                          "tokens_per_s": window_tokens / max(elapsed, 1e-9), "seq_len": T,
                          "elapsed_s": time.perf_counter() - start, "grad_norm": float(grad_norm),
                          "bad_steps": guard.total}
                record.update(mfu(T, record["tokens_per_s"]))
                if carry and extras:
                    record.update(carried_rho_norms(states))
                if accelerator.scaler is not None:
                    record.update(loss_scale=accelerator.scaler.get_scale(), scaler_overflows=guard.overflows)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window_loss, window_n, window_tokens, window_t0 = 0.0, 0, 0, time.perf_counter()
            if ((tc.eval_every and step % tc.eval_every == 0) or last) and not stop:
                final_val = evaluate(model, data, T=eval_T, batch_size=eval_rows, max_batches=tc.eval_batches,
                                     accelerator=accelerator)
                record = record or {"step": step, "tokens": tokens_seen}
                record.update(final_val)
                if extras:
                    record.update(eval_extras(raw_model, data, eval_T, cfg, step, samples, accelerator.device))
                say(f"step {step}: val loss {final_val['val_loss']:.4f} nats/token, "
                    f"{final_val['val_bpb']:.4f} bits/byte")
            if record is not None:
                log.write(record)
                accelerator.log({k: v for k, v in record.items() if k != "sample"}, step=step)  # samples: a table
            inject.kill_point("after_step", step)
            if checkpoints.due(step, at_end=last or stop is not None, in_bad_streak=guard.consecutive > 0):
                checkpoints.save(step, tokens_seen, data.train, states, guard.state_dict())
            if stop:
                stopped_by = stop
                break
            if time_up:
                say(f"train.max_time_s={tc.max_time_s} reached at step {step}")
                break
    bar.close()
    data.close()

    if stopped_by:  # preempted or interrupted: the checkpoint is the result; no eval, no export
        saved = f"checkpoint {checkpoints.last}" if checkpoints.last_step == step else "no checkpoint (keep_checkpoints=0)"
        accelerator.print(f"stopped by {stopped_by} after step {step}: {saved}; continue with train.resume=auto")
        accelerator.end_training()
        return TrainResult(run_dir, step, tokens_seen, final_val, "", stopped_by)

    # -- the end: weights, a sample -------------------------------------------------------------
    if not final_val:  # resumed at or past max_steps: nothing trained, still report where it stands
        final_val = evaluate(model, data, T=eval_T, batch_size=eval_rows, max_batches=tc.eval_batches,
                             accelerator=accelerator)
    final_model = save_final(accelerator, model, cfg.model, run_dir)  # every rank: FSDP gathers the weights
    sample = ""
    if accelerator.is_main_process and tc.sample_tokens:
        sample = sample_text(final_model.to(accelerator.device), data.tokenizer, tc.sample_prompt, tc.sample_tokens,
                             temperature=tc.sample_temperature, top_k=tc.sample_top_k, seed=tc.seed,
                             device=accelerator.device, max_context=sample_context(tc))
        accelerator.print(f"--- sample ({tc.sample_tokens} tokens) ---\n{sample}\n---")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    accelerator.print(f"done: {step} steps, {tokens_seen} tokens, val loss {final_val.get('val_loss', float('nan')):.4f}"
                      f" ({final_val.get('val_bpb', float('nan')):.4f} bpb); weights in {run_dir}")
    return TrainResult(run_dir, step, tokens_seen, final_val, sample)


def eval_extras(model, data, T: int, cfg: RunConfig, step: int, samples: SampleTable, device) -> dict:
    """Dashboard extras at a validation: sparsity and rho norms on the first held-out rows, and a
    short sample (also sent to the W&B samples table)."""
    extra = {}
    if cfg.tracking.diagnostics:
        batch = next(iter(data.val_batches(T, 8, 1)), None)
        if batch is not None:
            extra.update(activation_and_state(model, batch[0].to(device)))
    if cfg.tracking.eval_sample_tokens:
        tc = cfg.train
        text = sample_text(model, data.tokenizer, tc.sample_prompt, cfg.tracking.eval_sample_tokens,
                           temperature=tc.sample_temperature, top_k=tc.sample_top_k, seed=tc.seed, device=device,
                           max_context=sample_context(tc))
        extra["sample"] = text
        samples.add(step, text)
    return extra
