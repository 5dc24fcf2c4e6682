"""A model directory saved by an earlier layout of the package still loads: with bdh-scale (its
config.json fields and weights) and with transformers (the code it shipped), to the same logits."""
from pathlib import Path

import torch
from safetensors.torch import load_file

from bdh_scale.model import load_pretrained

FIXTURE = Path(__file__).parent / "fixtures"


def test_a_model_saved_before_the_layout_change_loads_with_the_same_logits():
    expected = load_file(FIXTURE / "model_v0_expected.safetensors")
    model = load_pretrained(FIXTURE / "model_v0")
    assert torch.equal(model(expected["ids"]).logits, expected["logits"])


def test_it_also_loads_with_transformers_from_the_code_it_shipped(tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    copy = tmp_path / "model_v0"  # transformers caches remote code per directory: a private copy
    shutil.copytree(FIXTURE / "model_v0", copy)
    expected = load_file(FIXTURE / "model_v0_expected.safetensors")
    model = AutoModelForCausalLM.from_pretrained(copy, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(model(expected["ids"]).logits, expected["logits"], atol=1e-6)
