"""Validation: mean next-token loss over a fixed held-out set, in nats per token and bits per byte."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def evaluate(model, data, *, T: int, batch_size: int, max_batches: int, accelerator) -> dict:
    """Loss over the same held-out windows every call (windows independent, no carried state).

    Each rank evaluates the same windows (they are few); the mean is exact and needs no gather.
    Bits per byte divides by the tokenizer's bytes per token, so byte and BPE runs compare.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data.val_batches(T, batch_size, max_batches):
        out = model(x.to(accelerator.device), y.to(accelerator.device))
        total += out.loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    if count == 0:
        raise RuntimeError("the validation split yielded no batch; lower train.eval_seq_len or data.val_fraction")
    loss = total / count
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / data.bytes_per_token}
