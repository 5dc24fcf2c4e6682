"""What a run reports: a metrics row every train.log_every steps (loss over the steps since the
last row, throughput, MFU, carried-state norms, loss scale) and at each validation the held-out
loss with the dashboard extras (sparsity, rho norms, a sample). Rows go to metrics.jsonl and to
Accelerate's trackers with the same keys.
"""
from __future__ import annotations

import time

import torch

from bdh_scale.model.sampling import sample_text
from bdh_scale.train.distributed import slowest
from bdh_scale.train.evaluate import evaluate, evaluate_sources
from bdh_scale.train.report.diagnostics import activation_and_state, carried_rho_norms
from bdh_scale.train.report.progress import memory_in_use
from bdh_scale.train.run import Run
from bdh_scale.train.schedule import sample_context
from bdh_scale.train.step import StepResult


class LossWindow:
    """Loss and tokens since the last metrics row; skipped (non-finite) steps add tokens, not loss."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss, self.n, self.tokens, self.t0 = 0.0, 0, 0, time.perf_counter()

    def add(self, step) -> None:
        if not step.bad:
            self.loss += step.loss
            self.n += 1
        self.tokens += step.tokens


def train_row(run: Run, window: LossWindow, step: StepResult, T: int, started: float) -> dict:
    """The metrics row of the steps in `window` (every rank takes part: loss and time are reduced)."""
    acc = run.accelerator
    mean = window.loss / window.n if window.n else torch.tensor(float("nan"))
    loss = acc.reduce(torch.as_tensor(mean, device=acc.device), reduction="mean").item()
    elapsed = slowest(acc, time.perf_counter() - window.t0)
    row = {"step": run.step, "tokens": run.tokens, "loss": loss, "lr": step.lr,
           "tokens_per_s": window.tokens / max(elapsed, 1e-9), "seq_len": T,
           "elapsed_s": time.perf_counter() - started, "grad_norm": float(step.grad_norm),
           "bad_steps": run.guard.total}
    if run.cfg.data.on_bad_record == "skip" or run.bad_records:
        row["data/bad_records"] = run.bad_records
    row.update(run.mfu(T, row["tokens_per_s"]))
    row["memory_mib"] = memory_in_use(acc.device) / 2**20  # train/report/progress.py says which kind
    if run.carry and run.extras:
        row.update(carried_rho_norms(run.carried))
    if acc.scaler is not None:
        row.update(loss_scale=acc.scaler.get_scale(), scaler_overflows=run.guard.overflows)
    window.reset()
    return row


def eval_T(tc) -> int:
    return tc.eval_seq_len or tc.seq_len


def val_rows(tc, world: int) -> int:
    """Held-out rows of a validation: as many as the run's lanes, split over the ranks."""
    return tc.batch_size * tc.grad_accum_steps * world


def validate(run: Run) -> dict:
    """Held-out loss of the run's model (every rank takes part): the same windows every time, rows
    spread over the ranks, so the figure depends on the run's lanes, not on how processes hold them. A carry run is
    also read carried, as it trains (val_loss is then that reading), with its loss by context."""
    tc = run.cfg.train
    score = evaluate_sources if run.data.by_source else evaluate  # a mixture: each source's held-out set, and their sums
    return score(run.model, run.data, T=eval_T(tc), batch_size=val_rows(tc, run.accelerator.num_processes), max_batches=tc.eval_batches,
                    accelerator=run.accelerator, carried=run.carry,
                    doc_reset=run.data.doc_reset).record(run.carry)


def val_line(step: int, val: dict) -> str:
    """The progress line of a validation: val_loss, its bits per byte, and the other reading."""
    line = f"step {step}: val loss {val['val_loss']:.4f} nats/token, {val['val_bpb']:.4f} bits/byte"
    if "val_loss_carried" in val:
        line += f" (carried {val['val_loss_carried']:.4f}, windows {val['val_loss_window']:.4f})"
    per_source = [f"{key[9:]} {value:.4f}" for key, value in val.items() if key.startswith("val_loss/")]
    if per_source:  # a mixture: each source's val_loss
        line += f" [{', '.join(per_source)}]"
    if "val_answer_accuracy" in val:
        line += f"; answers right {val['val_answer_accuracy']:.1%}"
    return line


def sample(run: Run, model, n_tokens: int) -> str:
    """A sample of n_tokens after the recipe's prompt, with a private RNG (training is unaffected)."""
    tc = run.cfg.train
    return sample_text(model, run.data.tokenizer, tc.sample_prompt, n_tokens, temperature=tc.sample_temperature,
                       top_k=tc.sample_top_k, seed=tc.seed, device=run.accelerator.device,
                       max_context=sample_context(tc),
                       doc_separator=run.cfg.data.doc_separator if run.data.doc_reset else None)


def eval_extras(run: Run) -> dict:
    """Dashboard extras at a validation, read on the main process: sparsity and rho norms on the
    first held-out rows, and a short sample (also sent to the W&B samples table)."""
    cfg, device = run.cfg, run.accelerator.device
    extra = {}
    if cfg.tracking.diagnostics:
        batch = next(iter(run.data.val_batches(eval_T(cfg.train), 8, 1)), None)
        if batch is not None:
            extra.update(activation_and_state(run.raw_model, batch[0].to(device)))
    if cfg.tracking.eval_sample_tokens:
        text = sample(run, run.raw_model, cfg.tracking.eval_sample_tokens)
        extra["sample"] = text
        run.samples.add(run.step, text)
    return extra
