"""Model FLOPs per token, the one count behind MFU (training log, bdh-bench) and the compute axis of
the scaling sweeps. Counted as 2 x multiply-adds of the model's math, the usual convention:

* training = 3 x forward (backward costs two forwards), HRM's one-step gradient aside;
* causal attention sees T/2 earlier tokens on average (or the window), whatever the kernel does;
  a kernel that computes the masked half too is charged for it in its time, not in these FLOPs;
* elementwise work (ReLU, RoPE, norms, softmax) is not counted: it is small next to the GEMMs.
"""
from __future__ import annotations

from bdh_scale.model.config import ModelConfig


def bdh_layer_macs(cfg: ModelConfig, ctx: float) -> float:
    """One BDH layer, one token: encoder, encoder_v and decoder (D x N per head each), then the
    scores over ctx earlier tokens (N per pair) and their values (D per pair)."""
    H, D, N = cfg.n_head, cfg.n_embd, cfg.n_neurons
    return 3 * D * H * N + H * ctx * (N + D)


def gpt_layer_macs(cfg: ModelConfig, ctx: float) -> float:
    """One GPT-2 block, one token: qkv + proj (4 D^2), the 4x MLP (8 D^2), QK^T and AV (2 ctx D)."""
    D = cfg.n_embd
    return 12 * D * D + 2 * ctx * D


def flops_per_token(cfg: ModelConfig, T: int, training: bool = True) -> float:
    """Model FLOPs for one token of a length-T window (forward, or forward + backward)."""
    ctx = min(T / 2, cfg.attn_window or T)
    head = cfg.n_embd * cfg.vocab_size
    if cfg.arch == "gpt":
        fwd = cfg.n_layer * gpt_layer_macs(cfg, ctx) + head
        return 2 * fwd * (3 if training else 1)
    layer = bdh_layer_macs(cfg, ctx)
    if cfg.arch == "bdh":
        fwd = cfg.n_layer * layer + head
        return 2 * fwd * (3 if training else 1)
    # bdh_hrm: every cycle runs forward; with the one-step gradient only the last L and H pass
    # (hrm_l_layers + hrm_h_layers layers) is differentiated.
    passes = cfg.hrm_h_cycles * (cfg.hrm_l_cycles * cfg.hrm_l_layers + cfg.hrm_h_layers)
    graded = cfg.hrm_l_layers + cfg.hrm_h_layers if cfg.hrm_one_step_grad else passes
    if not training:
        return 2 * (passes * layer + head)
    return 2 * (passes * layer + 2 * graded * layer + 3 * head)
