"""Hooks on BDHLayer that read its sparse codes or silence a head, leaving bdh.py's code untouched.

Every layer computes xy_sparse = x_sparse * y_sparse in a module of its own, `product`
(bdh.SparseProduct), whose arguments are the two codes exactly as the layer computed them, as
(B, H, T, N) views. So:

- `capture_codes` is a forward pre-hook on `product`: it hands (x_sparse, y_sparse) to a sink;
- `ablate_heads` is a forward hook on `product` that zeroes chosen heads of x_sparse * y_sparse,
  i.e. their whole contribution to the decoder. Without the hook the layer runs unchanged.

Hooks fire on every call of a layer: in the BDH-HRM hybrid, whose layers run once per cycle,
statistics pool all cycles and an ablation applies to all of them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from bdh_scale.model.bdh.bdh import BDHLayer


def bdh_layers(model) -> list[tuple[str, BDHLayer]]:
    """(name, layer) of every BDHLayer in the model, in order; ValueError if it has none."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BDHLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BDH layers (is this the gpt baseline?); "
                         "the analyses read BDH's sparse neurons")
    return layers


@contextmanager
def capture_codes(model, sink: Callable[[str, torch.Tensor, torch.Tensor], None]):
    """Within the block, every layer call also calls sink(layer_name, x_sparse, y_sparse), both
    (B, H, T, N)."""
    handles = []
    for name, layer in bdh_layers(model):
        def read_codes(module, args, name=name):
            sink(name, *args)

        handles.append(layer.product.register_forward_pre_hook(read_codes))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def ablate_heads(layer: BDHLayer, heads: list[int]):
    """Within the block, `heads` of this layer contribute nothing to its decoder output."""
    def zero_heads(module, args, output):
        keep = torch.ones(output.size(1), device=output.device, dtype=output.dtype)
        keep[list(heads)] = 0
        return output * keep[None, :, None, None]

    handle = layer.product.register_forward_hook(zero_heads)
    try:
        yield
    finally:
        handle.remove()
