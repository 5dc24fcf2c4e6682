"""The training story, top to bottom: config -> data -> model -> Accelerate -> steps -> eval -> save.

One loop for every device: Accelerate picks CPU / MPS / CUDA, wraps the model for DDP or FSDP
when launched with several processes, applies autocast and the fp16 loss scaler. Data is not
passed through accelerator.prepare: every rank builds its own disjoint lanes (bdh_scale.data),
so nothing is re-split or duplicated.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data import build_data
from ..data.curriculum import seq_len_at
from ..model import build_model
from .evaluate import evaluate
from .optim import build_optimizer
from .precision import resolve_mixed_precision
from .rundir import prepare_run_dir, save_final
from .schedule import make_scheduler
from .tracking import MetricsLog, accelerate_log_with, init_trackers


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    final_val: dict = field(default_factory=dict)
    sample: str = ""


def train(cfg: RunConfig) -> TrainResult:
    tc = cfg.train
    state = PartialState()
    precision, notice = resolve_mixed_precision(tc.mixed_precision, state.device)
    accelerator = Accelerator(mixed_precision=precision, log_with=accelerate_log_with(cfg.tracking))
    if notice:
        accelerator.print(notice)
    set_seed(tc.seed, device_specific=True)  # dropout differs across ranks; data order does not

    # -- data: this rank's lanes; micro-batches of one step are disjoint groups of lanes --------
    lanes_per_rank = tc.batch_size * tc.grad_accum_steps
    data = build_data(cfg.data, batch_size=lanes_per_rank, world_size=accelerator.num_processes,
                      rank=accelerator.process_index, seed=tc.seed)
    if cfg.model.vocab_size != data.tokenizer.vocab_size:
        accelerator.print(f"model.vocab_size set to {data.tokenizer.vocab_size} by the tokenizer {data.tokenizer.name}")
        cfg.model.vocab_size = data.tokenizer.vocab_size

    # -- model and optimizer -----------------------------------------------------------------
    model = build_model(cfg.model)
    model.gradient_checkpointing = tc.gradient_checkpointing
    optimizer = build_optimizer(model, name=tc.optim, lr=tc.lr, weight_decay=tc.weight_decay,
                                betas=(tc.beta1, tc.beta2), muon_lr=tc.muon_lr)
    # A short run (max_steps below warmup_steps) warms up over all of its steps.
    scheduler = make_scheduler(optimizer, lr=tc.lr, min_lr=tc.min_lr, warmup_steps=min(tc.warmup_steps, tc.max_steps),
                               max_steps=tc.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    run_dir = prepare_run_dir(cfg, accelerator, data.tokenizer)
    log = MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process)
    init_trackers(accelerator, cfg.tracking, run_dir, run_dir.name, cfg.to_dict())
    n_params = raw_model.num_params()
    accelerator.print(f"run {run_dir} | {cfg.model.arch} {n_params / 1e6:.2f}M params | "
                      f"{accelerator.num_processes} process(es) on {accelerator.device} | precision {precision}")

    # -- the steps ------------------------------------------------------------------------------
    carry = tc.state == "carry"
    states = [None] * tc.grad_accum_steps  # one carried state per micro-batch group of lanes
    eval_T = tc.eval_seq_len or tc.seq_len
    tokens_per_step_global = 0
    tokens_seen = 0
    window_loss, window_n, window_tokens, window_t0 = 0.0, 0, 0, time.perf_counter()
    start = time.perf_counter()
    final_val: dict = {}
    bar = tqdm(total=tc.max_steps, disable=not (tc.progress and accelerator.is_local_main_process),
               dynamic_ncols=True, desc="train")
    step = 0
    model.train()
    while step < tc.max_steps:
        T = seq_len_at(step, tc.seq_len_schedule) if tc.seq_len_schedule else tc.seq_len
        x_all, y_all, restarted_all = data.train.next_batch(T)
        step_loss = 0.0
        for micro in range(tc.grad_accum_steps):
            rows = slice(micro * tc.batch_size, (micro + 1) * tc.batch_size)
            x, y = x_all[rows].to(accelerator.device), y_all[rows].to(accelerator.device)
            s = None
            if carry:
                s = states[micro] or raw_model.init_state(tc.batch_size, accelerator.device)
                s.reset_(restarted_all[rows].to(accelerator.device))
            # Sync gradients across ranks only on the last micro-batch of the step.
            sync = micro == tc.grad_accum_steps - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                out = model(x, y, state=s, return_state=carry)
                accelerator.backward(out.loss / tc.grad_accum_steps)
            if carry:
                states[micro] = out.state.detach()  # truncated BPTT: the next window sees values, not graph
            step_loss += out.loss.detach().float() / tc.grad_accum_steps
        grad_norm = None
        if tc.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        tokens_per_step_global = x_all.numel() * accelerator.num_processes
        tokens_seen += tokens_per_step_global
        window_loss += step_loss
        window_n += 1
        window_tokens += tokens_per_step_global
        bar.update(1)

        time_up = tc.max_time_s is not None and time.perf_counter() - start >= tc.max_time_s
        last = step >= tc.max_steps or time_up
        record = None
        if step % tc.log_every == 0 or last:
            loss = accelerator.reduce(window_loss / window_n, reduction="mean").item()
            elapsed = time.perf_counter() - window_t0
            record = {"step": step, "tokens": tokens_seen, "loss": loss, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": window_tokens / max(elapsed, 1e-9), "seq_len": T,
                      "elapsed_s": time.perf_counter() - start}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            window_loss, window_n, window_tokens, window_t0 = 0.0, 0, 0, time.perf_counter()
        if (tc.eval_every and step % tc.eval_every == 0) or last:
            final_val = evaluate(model, data, T=eval_T, batch_size=tc.batch_size, max_batches=tc.eval_batches,
                                 accelerator=accelerator)
            record = record or {"step": step, "tokens": tokens_seen}
            record.update(final_val)
            bar.write(f"step {step}: val loss {final_val['val_loss']:.4f} nats/token, "
                      f"{final_val['val_bpb']:.4f} bits/byte")
        if record is not None:
            log.write(record)
            accelerator.log(record, step=step)
        if not math.isfinite(step_loss.item()):
            raise FloatingPointError(f"loss is {step_loss.item()} at step {step}; lower train.lr or enable "
                                     "train.grad_clip (nothing after the last saved state was kept)")
        if time_up:
            bar.write(f"train.max_time_s={tc.max_time_s} reached at step {step}")
            break
    bar.close()

    # -- the end: weights, a sample -------------------------------------------------------------
    sample = ""
    if accelerator.is_main_process:
        save_final(raw_model, run_dir)
        if tc.sample_tokens:
            sample = generate_sample(raw_model, data.tokenizer, tc, accelerator.device)
            accelerator.print(f"--- sample ({tc.sample_tokens} tokens) ---\n{sample}\n---")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    accelerator.print(f"done: {step} steps, {tokens_seen} tokens, val loss {final_val.get('val_loss', float('nan')):.4f}"
                      f" ({final_val.get('val_bpb', float('nan')):.4f} bpb); weights in {run_dir}")
    return TrainResult(run_dir, step, tokens_seen, final_val, sample)


def generate_sample(model, tokenizer, tc, device) -> str:
    model.eval()
    prompt = tokenizer.encode(tc.sample_prompt) or [0]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    gen = torch.Generator(device="cpu").manual_seed(tc.seed)
    out = model.generate(idx, tc.sample_tokens, temperature=tc.sample_temperature, top_k=tc.sample_top_k,
                         generator=gen)
    return tokenizer.decode(out[0].tolist())
