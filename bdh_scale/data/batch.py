"""What every lanes object hands the training loop per step, and the held-out set per batch.

    batch = data.train.next_batch(T)
    batch.x, batch.y        LongTensor (B, T): inputs and next-token targets (y[:, t] = x[:, t+1])
    batch.restarted         BoolTensor (B,): the lane (re)starts here, so its carried state is stale
    batch.doc_start         BoolTensor (B, T): x[:, t] is the first token of a document

Targets that are not scored (data.score: answers, where a source marks its answers: MQAR's
values at the query positions, the passkey's key) are IGNORE (-100) in y: the loss, validation
and the metrics count only the others.

A document is a row of a jsonl/parquet/Hub dataset (for stream lanes: a document dealt to the
lane). Sources without documents (text files, the bundled corpora) give all-False doc_start.
A document that begins exactly at a window's first token is flagged there too, so a loop that
resets its state before every flagged token never carries one document into the next
(docs/design.md section 4).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from bdh_scale.model.output import IGNORE


class Batch(NamedTuple):
    x: torch.Tensor          # (B, T) int64 inputs
    y: torch.Tensor          # (B, T) int64 targets
    restarted: torch.Tensor  # (B,) bool
    doc_start: torch.Tensor  # (B, T) bool


def make_batch(window: np.ndarray, restarted, doc_start: np.ndarray | None,
               pin_memory: bool = False, scored: np.ndarray | None = None) -> Batch:
    """A Batch from windows of T+1 tokens per lane (B, T+1); doc_start (B, T+1) or None (no
    documents: all False). restarted: a bool or (B,) bools. scored (B, T+1) bools or None (every
    target scored): the tokens whose prediction counts; the others become IGNORE targets."""
    B, n = window.shape
    x = torch.from_numpy(np.ascontiguousarray(window[:, :-1], dtype=np.int64))
    targets = window[:, 1:] if scored is None else np.where(scored[:, 1:], window[:, 1:], IGNORE)
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))
    starts = (torch.zeros(B, n - 1, dtype=torch.bool) if doc_start is None
              else torch.from_numpy(np.ascontiguousarray(doc_start[:, :-1], dtype=np.bool_)))
    flags = torch.as_tensor(np.broadcast_to(np.asarray(restarted, dtype=np.bool_), (B,)).copy())
    if pin_memory:
        x, y = x.pin_memory(), y.pin_memory()
    return Batch(x, y, flags, starts)
