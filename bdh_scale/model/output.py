"""What every language model in bdh_scale returns from forward()."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None  # mean next-token cross-entropy in nats, when targets given
    state: Any = None  # the recurrent state after the last token (BDH), None for stateless models
    aux_loss: torch.Tensor | None = None  # extra terms already folded into .loss (e.g. ACT ponder cost)
