"""A model directory saved by an earlier layout of the package still loads: with bdh-scale (its
config.json fields and weights) and with transformers (the code it shipped), to the same logits.
The directory is kept as an archive (fixtures/model_v0.tar.gz), unpacked for each test."""
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bdh_scale.model import load_pretrained

FIXTURE = Path(__file__).parent / "fixtures"


@pytest.fixture
def model_v0(tmp_path) -> Path:
    with tarfile.open(FIXTURE / "model_v0.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "model_v0"


def test_a_model_saved_before_the_layout_change_loads_with_the_same_logits(model_v0):
    expected = load_file(FIXTURE / "model_v0_expected.safetensors")
    model = load_pretrained(model_v0)
    assert torch.equal(model(expected["ids"]).logits, expected["logits"])


def test_it_also_loads_with_transformers_from_the_code_it_shipped(model_v0):
    from transformers import AutoModelForCausalLM

    expected = load_file(FIXTURE / "model_v0_expected.safetensors")
    model = AutoModelForCausalLM.from_pretrained(model_v0, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(model(expected["ids"]).logits, expected["logits"], atol=1e-6)
