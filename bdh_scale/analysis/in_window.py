"""The one reading of a model without a state (the GPT baseline, BDH-HRM): what its window holds.

Such a model predicts from the last `reach` tokens it is given (model/registry.py, reach: the window
it trained on, no more than its positions). The memory analyses score it only where everything
an answer depends on fits in that window; beyond, a distance or a context bucket is out of reach.
Out of reach is reported as null (JSON) or "out of reach" (tables, figures), never as a number:
a stateless model read past its window would sit at chance, and that is a fact of the reading,
not a measurement of the model.
"""
from __future__ import annotations

import torch

OUT_OF_REACH = "out of reach"


@torch.no_grad()
def read_last(model, x: torch.Tensor, reach: int) -> torch.Tensor:
    """Logits (B, L, V) of x (B, L) from one forward over its last `reach` tokens. The positions
    before that window get NaN: nothing was read there, and a NaN cannot pass for a score."""
    start = max(0, x.size(1) - reach)
    logits = model(x[:, start:]).logits.float()
    if start == 0:
        return logits
    unread = logits.new_full((x.size(0), start, logits.size(-1)), float("nan"))
    return torch.cat([unread, logits], dim=1)


def cell(value):
    """A measured value as a table shows it: None (out of reach) as the words."""
    return OUT_OF_REACH if value is None else value


def value(reading, metric: str | None):
    """One reading's metric (metric None: the reading is the number, as in a context bucket); None
    where the reading is absent (no state) or out of reach."""
    return reading if reading is None or metric is None else reading[metric]
