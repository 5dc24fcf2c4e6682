"""What every language model in bdh_scale returns from forward()."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None  # mean next-token cross-entropy in nats over the scored targets, when given
    state: Any = None  # the recurrent state after the last token (BDH), None for stateless models
    aux_loss: torch.Tensor | None = None  # extra terms already folded into .loss (e.g. ACT ponder cost)


IGNORE = -100  # a target that is not scored (data.score: answers); F.cross_entropy's own ignore_index


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token in float32: (B, T, V), (B, T) -> (B, T); 0 where the target is IGNORE."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none", ignore_index=IGNORE)


def scored_mean(per_token: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean of per-token losses over the scored targets. A window without one (a stretch of
    filler when only answers are scored) gives 0, with a graph, instead of 0/0 = NaN."""
    return per_token.sum() / (targets != IGNORE).sum().clamp(min=1)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats over the scored targets."""
    return scored_mean(token_ce(logits, targets), targets)
