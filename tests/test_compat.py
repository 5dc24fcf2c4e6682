"""A pathwaycom/bdh state dict loads into a BDH whose forward is the reference's."""
import pytest
import torch

from bdh_scale.model.bdh.pathway import load_pathway_state_dict
from tests.helpers.pathway_reference import ReferenceBDH


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return ReferenceBDH(n_layer=3, n_embd=32, n_head=2, multiplier=8).eval()


def test_reference_state_dict_reproduces_reference_logits(reference):
    sd = reference.state_dict()
    assert set(sd) == {"encoder", "encoder_v", "decoder", "embed.weight", "lm_head", "attn.freqs"}
    model = load_pathway_state_dict(sd, n_layer=3).eval()
    idx = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        assert (model(idx).logits - reference(idx)).abs().max() < 1e-4


def test_untied_copy_starts_equal(reference):
    model = load_pathway_state_dict(reference.state_dict(), n_layer=3, per_layer_params=True).eval()
    assert torch.equal(model.layers[2].encoder, reference.encoder)
    idx = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert (model(idx).logits - reference(idx)).abs().max() < 1e-4


def test_wrong_state_dicts_are_refused(reference):
    sd = reference.state_dict()
    with pytest.raises(KeyError, match="missing"):
        load_pathway_state_dict({k: v for k, v in sd.items() if k != "encoder_v"})
    with pytest.raises(ValueError, match="rope_theta"):
        load_pathway_state_dict(sd, n_layer=3, rope_theta=1e4)
    with pytest.raises(TypeError, match="unknown ModelConfig"):
        load_pathway_state_dict(sd, n_layers=3)
