"""Load weights of the public reference implementation (pathwaycom/bdh) into bdh_scale's BDH.

The reference stores one encoder (nh, D, N), encoder_v (nh, D, N) and decoder (nh*N, D) shared
by all layers, `embed.weight`, `lm_head` (D, vocab) and the RoPE frequencies as the buffer
`attn.freqs`; its attention has no score scale. With `per_layer_params=False` and
`score_scale="none"` (the defaults here) our forward is the reference's.
"""
from __future__ import annotations

import dataclasses

import torch

from bdh_scale.model import BDH, ModelConfig
from bdh_scale.model.bdh.rope import rope_freqs

REQUIRED = ("encoder", "encoder_v", "decoder", "embed.weight", "lm_head")


def load_pathway_state_dict(state_dict: dict, **config) -> BDH:
    """Build a BDH whose forward equals the reference model that produced `state_dict`.

    Shapes give n_head, n_embd, N and vocab_size; pass n_layer (reference default 6) and any
    other ModelConfig field as keyword arguments. per_layer_params=True copies the shared weights
    into every layer (a start for fine-tuning with untied layers).
    """
    missing = [k for k in REQUIRED if k not in state_dict]
    if missing:
        raise KeyError(f"not a pathwaycom/bdh state dict: missing {missing}; expected keys {list(REQUIRED)}")
    nh, D, N = state_dict["encoder"].shape
    vocab = state_dict["embed.weight"].shape[0]
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise TypeError(f"unknown ModelConfig fields {unknown}; valid: {sorted(fields)}")
    settings = dict(n_layer=6, dropout=0.0, per_layer_params=False, score_scale="none", attn_backend="parallel")
    settings.update(config)
    settings.update(n_head=nh, n_embd=D, vocab_size=vocab, mlp_internal_dim_multiplier=N * nh // D)
    cfg = ModelConfig(**settings)
    if cfg.n_neurons != N:
        raise ValueError(f"encoder has N={N} neurons per head, which n_embd={D}, n_head={nh} cannot express")
    _check_freqs(state_dict, N, cfg.rope_theta)

    model = BDH(cfg)
    shared = {k: state_dict[k] for k in ("encoder", "encoder_v", "decoder")}
    ours = {"embed.weight": state_dict["embed.weight"], "lm_head": state_dict["lm_head"]}
    if cfg.per_layer_params:
        for i in range(cfg.n_layer):
            ours.update({f"layers.{i}.{k}": v.clone() for k, v in shared.items()})
    else:
        ours.update(shared)
    # strict=False: options the reference lacks (forgetting gates, diff lambda) keep their init.
    model.load_state_dict(ours, strict=False)
    return model


def _check_freqs(state_dict: dict, N: int, theta: float) -> None:
    """The stored RoPE frequencies must be those our phases use (same theta), else logits differ."""
    stored = [v for k, v in state_dict.items() if k.endswith("freqs")]
    want = rope_freqs(N, theta).float()
    for f in stored:
        if not torch.allclose(f.reshape(-1).float(), want, rtol=1e-5, atol=0):
            raise ValueError(f"the state dict's RoPE frequencies do not match rope_theta={theta}; "
                             "pass the theta it was trained with (rope_theta=...)")
