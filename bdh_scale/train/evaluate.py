"""Validation: mean next-token loss over a fixed held-out set, in nats per token and bits per byte."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def evaluate(model, data, *, T: int, batch_size: int, max_batches: int, accelerator) -> dict:
    """Loss over the same held-out windows every call (windows independent, no carried state).

    `batch_size` is the global number of rows per batch; rank r evaluates rows r, r+W, ... and
    the sums are reduced, so the figure depends only on the global batch, not on how many
    processes share it. Bits per byte divides by the tokenizer's bytes per token, so byte and
    BPE runs compare.
    """
    was_training = model.training
    model.eval()
    W, r = accelerator.num_processes, accelerator.process_index
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # sum of losses, tokens
    for x, y in data.val_batches(T, batch_size, max_batches):
        x, y = x[r::W].to(accelerator.device), y[r::W].to(accelerator.device)
        if y.numel() == 0:
            continue
        out = model(x, y)
        totals += torch.tensor([out.loss.item() * y.numel(), y.numel()], dtype=torch.float64, device=totals.device)
    model.train(was_training)
    totals = accelerator.reduce(totals, reduction="sum") if W > 1 else totals
    if totals[1] == 0:
        raise RuntimeError("the validation split yielded no batch; lower train.eval_seq_len or data.val_fraction")
    loss = (totals[0] / totals[1]).item()
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / data.bytes_per_token}
