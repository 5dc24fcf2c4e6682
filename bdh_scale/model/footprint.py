"""What a model needs in memory, from its config alone: nothing of the size asked for is allocated,
so a config that cannot fit is refused in a second instead of taking the machine
(train/checks/memory.py; model/pretrained.py before it loads a model directory).

    parameter_count(cfg)        exact: the model built on the meta device (shapes, no storage)
    training_step(cfg, ...)     one optimizer step: weights, gradients, optimizer moments,
                                carried states, and the activations autograd keeps plus the
                                largest temporaries of the backward

The activations are a count of the tensors each form saves for its backward, per layer, in units
of one float per (lane, token, head, neuron) and so on. The coefficients were read off
saved_tensors_hooks on the real code (BDH: 4.1 x B T H N + 2.6 x B T H D + 5.3 x B T D per layer,
plus the B H T^2 score map in the parallel form; a GPT-2 block 17 x B T D; the logits 1.05 x B T V)
and the whole estimate is checked against the measured peak of real training steps at several
sizes (`python -m bdh_scale.bench.footprint`, docs/results). It errs low rather than high: a
refusal of a run that would have fitted costs more than a late failure of one that did not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bdh_scale.model.bdh.bdh import attention_plan
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.registry import build_model

FLOAT = 4  # bytes of an fp32 value: weights, gradients and moments are fp32 in every precision


def build_on_meta(cfg: ModelConfig):
    """The model of `cfg` with shapes only (the meta device): its parameters cost nothing."""
    with torch.device("meta"):
        return build_model(cfg)


def parameter_count(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in build_on_meta(cfg).parameters())


@dataclass(frozen=True)
class Footprint:
    """Bytes one process needs for a training step (or to hold a model)."""

    params: int        # parameters (count)
    fixed: int         # weights, gradients, optimizer moments, carried states
    activations: int   # saved for the backward, and the backward's largest temporaries
    overhead: int = 0  # the allocator's and the runtime's share on a device (train/checks/memory.py)

    @property
    def total(self) -> int:
        return self.fixed + self.activations + self.overhead

    def describe(self) -> str:
        gib = 2**30
        return (f"{self.total / gib:,.2f} GiB (weights, gradients and optimizer state {self.fixed / gib:,.2f}, "
                f"activations {self.activations / gib:,.2f}, allocator and runtime {self.overhead / gib:,.2f})")


def _bdh_layer_floats(cfg: ModelConfig, B: int, T: int, kind: str, chunk: int) -> tuple[float, float]:
    """(saved, backward temporaries) of one BDH layer, in floats."""
    H, D, N = cfg.n_head, cfg.n_embd, cfg.n_neurons
    per_neuron = 4.1 + (1.0 if cfg.dropout > 0 else 0.0) + (1.25 if cfg.diff_attn else 0.0)
    saved = B * T * (per_neuron * H * N + 2.6 * H * D + 5.3 * D)
    temp = 3.0 * B * T * H * N
    if kind == "parallel":
        plain = cfg.forget_mode == "none" and cfg.attn_window is None and not cfg.diff_attn
        saved += (1.0 if plain else 2.0) * B * H * T * T
        temp += 2.0 * B * H * T * T  # the score map's gradient and its transpose
    else:  # chunked / fla: C x C blocks, and a state (N x D per lane and head) rebuilt in backward
        saved += B * H * T * chunk / 8
        temp += 2.0 * B * H * N * D + 2.0 * B * H * chunk * chunk
    return saved, temp


def _activation_floats(cfg: ModelConfig, B: int, T: int, checkpointing: bool, carry: bool) -> tuple[float, float]:
    """(kept for the backward, the backward's largest temporaries) of one forward and backward of
    B x T tokens, in floats."""
    V, D = cfg.vocab_size, cfg.n_embd
    if cfg.arch == "gpt":
        layer, temp, layers = 17.0 * B * T * D, 4.0 * B * T * D, cfg.n_layer
    else:
        plan = attention_plan(cfg, T, carry, carry)
        layer, temp = _bdh_layer_floats(cfg, B, T, plan.kind, plan.chunk)
        # HRM differentiates its last L and H passes only (hrm_one_step_grad)
        layers = cfg.n_layer if cfg.arch == "bdh" else cfg.hrm_l_layers + cfg.hrm_h_layers
    logits, logit_temp = 1.05 * B * T * V, 2.0 * B * T * V  # kept for the loss; the softmax and its gradient
    if checkpointing:  # each layer keeps its inputs; one layer's activations live again in its backward
        return layers * 3.0 * B * T * D + logits, layer + temp + logit_temp
    return layers * layer + logits, temp + logit_temp


def training_step(cfg: ModelConfig, batch_size: int, seq_len: int, *, optim: str = "adamw", precision: str = "no",
                  checkpointing: bool = False, carry: bool = False, bptt_windows: int = 1, grad_accum: int = 1,
                  shards: int = 1, ddp: bool = False) -> Footprint:
    """One process's peak in a training step of `batch_size` lanes x `seq_len` tokens (one
    micro-batch; gradient accumulation adds carried states, not activations). shards: FSDP's
    number of processes sharing the weights, gradients and moments; ddp: the gradient buckets."""
    P = parameter_count(cfg)
    moments = 1 if optim == "muon" else 2  # Muon keeps one momentum for the projections (most weights)
    fixed = P * FLOAT * (2 + moments) / shards + (P * FLOAT if ddp else 0)
    if precision in ("fp16", "bf16"):
        fixed += P * 2 / shards  # autocast's half-precision copies of the weights
    if carry and cfg.arch == "bdh":  # rho (N x D per head and layer) of every lane, carried between steps
        lanes = batch_size * grad_accum
        fixed += lanes * cfg.n_layer * cfg.n_head * cfg.n_neurons * cfg.n_embd * FLOAT
    act_bytes = 2 if precision in ("fp16", "bf16") else FLOAT
    kept, temporaries = _activation_floats(cfg, batch_size, seq_len, checkpointing, carry)
    activations = (kept * bptt_windows + temporaries) * act_bytes  # every window's graph is kept until the backward
    return Footprint(P, int(fixed), int(activations))


def loading(cfg: ModelConfig) -> Footprint:
    """Loading a saved model: the weights as read from the file and the model they are copied into."""
    P = parameter_count(cfg)
    return Footprint(P, 2 * P * FLOAT, 0)
