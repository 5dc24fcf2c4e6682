"""Hooks on BDHLayer that read its sparse codes or silence a head, leaving bdh.py's code untouched.

BDHLayer.forward keeps x_sparse and y_sparse local; only their product passes through a module,
the layer's dropout `drop` (an identity in eval mode). So:

- `capture_codes` hooks each layer's forward, takes the arguments BDH.forward passed it
  (x, encoder, encoder_v, decoder, cos, sin, state, plan) and recomputes x_sparse and y_sparse
  with the layer's own parts (its queries, forget gate and scale) and the same attention kernels.
  That recomputation mirrors the first lines of BDHLayer.forward; to make sure it never drifts
  from the real thing, every call is checked against the product x_sparse * y_sparse the layer
  itself hands to `drop`, and a mismatch is an error, not a silent wrong statistic.
- `ablate_heads` is a forward hook on `drop` that zeroes chosen heads of x_sparse * y_sparse,
  i.e. their whole contribution to the decoder. Without the hook the layer runs unchanged.

Hooks fire on every call of a layer: in the BDH-HRM hybrid, whose layers run once per cycle,
statistics pool all cycles and an ablation applies to all of them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F

from ..model.attention import attend_parallel
from ..model.bdh import BDHLayer, layer_norm
from ..model.recurrent import attend_chunked
from ..model.rope import rotate


def bdh_layers(model) -> list[tuple[str, BDHLayer]]:
    """(name, layer) of every BDHLayer in the model, in order; ValueError if it has none."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BDHLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BDH layers (is this the gpt baseline?); "
                         "the analyses read BDH's sparse neurons")
    return layers


def sparse_codes(layer: BDHLayer, x, encoder, encoder_v, decoder, cos, sin, state, plan):
    """x_sparse, y_sparse: (B, H, T, N) for one call of `layer` with these arguments."""
    kind, chunk, need_state = plan
    x_sparse = F.relu(torch.einsum("btd,hdn->bhtn", x, encoder))  # (B, H, T, N)
    k = rotate(x_sparse, cos, sin)
    q = layer.queries(k)
    v = x.unsqueeze(1)
    log_g = layer.forget(x)
    window = layer.config.attn_window
    if kind == "parallel" and state is None and not need_state:
        a = attend_parallel(q, k, v, layer.scale, log_g, window)
    else:
        a, _ = attend_chunked(q, k, v, layer.scale, state, log_g, window, chunk, need_state=False)
    y_sparse = F.relu(torch.einsum("bhtd,hdn->bhtn", layer_norm(a), encoder_v))
    return x_sparse, y_sparse


@contextmanager
def capture_codes(model, sink: Callable[[str, torch.Tensor, torch.Tensor], None]):
    """Within the block, every layer call also calls sink(layer_name, x_sparse, y_sparse)."""
    handles, product = [], {}
    for name, layer in bdh_layers(model):
        def before_dropout(module, args, name=name):
            product[name] = args[0]

        def after_layer(module, args, output, name=name):
            x_sparse, y_sparse = sparse_codes(module, *args)
            seen = product.pop(name)
            if not torch.allclose(x_sparse * y_sparse, seen, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"{name}: recomputed x_sparse * y_sparse differs from the layer's own; "
                                   "BDHLayer.forward changed and analysis/capture.py must follow it")
            sink(name, x_sparse, y_sparse)

        handles.append(layer.drop.register_forward_pre_hook(before_dropout))
        handles.append(layer.register_forward_hook(after_layer))
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

    handle = layer.drop.register_forward_hook(zero_heads)
    try:
        yield
    finally:
        handle.remove()
