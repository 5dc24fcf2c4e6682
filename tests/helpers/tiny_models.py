"""Tiny untrained models for the transformers export tests: seeded, with every option of the
model section, and a previous-token path that carries weight."""
from __future__ import annotations

import torch

from bdh_scale.model import ModelConfig, build_model
from bdh_scale.model.bdh.token_shift import TokenShift

TINY = dict(n_layer=2, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0)


def tiny_model(seed: int = 0, **options):
    """The model of TINY with `options` (model section fields), in eval mode. The token shift is
    zero at initialisation, so its taps get random weights here: a dropped tap or a lost shift
    state would otherwise leave the logits unchanged."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TINY, **options}))
    for module in model.modules():
        if isinstance(module, TokenShift):
            torch.nn.init.normal_(module.weight, std=0.3)
    return model.eval()
