"""The memory estimate of model/footprint.py against what the code really does: the parameter count
of a model built on the meta device is the built model's, and the activations it counts are the
bytes autograd saves for the backward (saved_tensors_hooks) within a margin, in the parallel form,
the chunked form and with gradient checkpointing. (Whole-process peaks against the estimate are a
benchmark: python -m bdh_scale.bench.footprint.)"""
import pytest
import torch

from bdh_scale.model import ModelConfig, build_model
from bdh_scale.model.footprint import FLOAT, _activation_floats, parameter_count

BASE = dict(n_layer=2, n_embd=64, n_head=4, mlp_internal_dim_multiplier=16, dropout=0.0, vocab_size=256)


@pytest.mark.parametrize("arch", ["bdh", "gpt", "bdh_hrm"])
def test_the_parameter_count_is_the_built_models(arch):
    cfg = ModelConfig(**BASE, arch=arch, token_shift="layer" if arch == "bdh" else "none")
    assert parameter_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


def saved_bytes(cfg: ModelConfig, B: int, T: int, checkpointing: bool) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one training forward."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.gradient_checkpointing = checkpointing
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)
    return sum(storages.values())


@pytest.mark.parametrize("over,B,T,ckpt", [({}, 2, 64, False), ({"attn_backend": "chunked"}, 2, 512, False),
                                           ({"dropout": 0.1, "token_shift": "layer"}, 4, 64, False),
                                           ({}, 2, 128, True), ({"arch": "gpt"}, 2, 64, False)])
def test_the_activations_counted_are_those_autograd_keeps(over, B, T, ckpt):
    cfg = ModelConfig(**{**BASE, **over})
    kept, _ = _activation_floats(cfg, B, T, ckpt, carry=False)
    assert 0.8 < kept * FLOAT / saved_bytes(cfg, B, T, ckpt) < 1.25
