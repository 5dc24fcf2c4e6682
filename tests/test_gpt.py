import pytest
import torch

from bdh_scale.model.gpt.gpt import GPT, GPTConfig
from bdh_scale.model.output import ModelOutput


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 50, "block_size": 16, **kw}))


def test_shapes_and_loss():
    model = tiny()
    idx = torch.randint(0, 50, (3, 10))
    out = model(idx, idx)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 10, 50) and out.state is None
    assert out.loss.ndim == 0 and abs(out.loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5
    assert model(idx).loss is None


def test_causal():
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    a, b = model(idx).logits, model(changed).logits
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_a_document_boundary_equals_running_the_documents_separately():
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, 14))
    doc_start = torch.zeros(2, 14, dtype=torch.bool)
    doc_start[0, 5] = doc_start[1, 0] = doc_start[1, 9] = True
    out = model(idx, doc_start=doc_start).logits
    for lane, cuts in ((0, [0, 5, 14]), (1, [0, 9, 14])):
        for lo, hi in zip(cuts, cuts[1:]):
            assert torch.allclose(out[lane, lo:hi], model(idx[lane:lane + 1, lo:hi]).logits[0], atol=1e-5)


@pytest.fixture
def one_thread():
    """Toy matmuls run faster on one thread than on cores shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_overfits_a_tiny_batch(one_thread):
    model = tiny(dropout=0.0)
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(x, y).loss.item()
    for _ in range(50):
        opt.zero_grad()
        loss = model(x, y).loss
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_state_is_refused_with_a_clear_message():
    model = tiny()
    idx = torch.randint(0, 50, (1, 4))
    with pytest.raises(ValueError, match='stateless.*train.state.*"reset"'):
        model(idx, state=object())
    with pytest.raises(ValueError, match="stateless"):
        model(idx, return_state=True)
    model(idx, return_state=False)  # what the trainer passes with train.state=reset


def test_too_long_sequence():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_generate_crops_to_block_size_and_is_seeded(one_thread):
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, 3))
    out = model.generate(idx, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    again = model.generate(idx, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 23) and torch.equal(out[:, :3], idx) and torch.equal(out, again)
    greedy = model.generate(idx, 4, temperature=0)
    assert torch.equal(greedy[:, 3], model(idx).logits[:, -1].argmax(-1))


@pytest.mark.parametrize("bias", [False, True])
def test_the_head_is_tied_to_the_embedding(bias):
    model = tiny(bias=bias)
    assert "lm_head.weight" not in model.state_dict()  # tied head is the embedding itself
    d, V = model.config.n_embd, model.config.vocab_size
    per_layer = 12 * d * d + 2 * d * (1 + bias) + bias * 9 * d  # 2 LN, qkv / proj / fc / proj
    assert model.num_params() == model.config.n_layer * per_layer + (V + model.config.block_size) * d + d * (1 + bias)


def test_save_and_load_pretrained_round_trip(tmp_path):
    from bdh_scale.model import load_pretrained

    model = tiny().eval()
    model.save_pretrained(tmp_path / "final")
    loaded = load_pretrained(tmp_path / "final").eval()
    assert isinstance(loaded, GPT)
    idx = torch.randint(0, 50, (1, 8))
    assert torch.equal(model(idx).logits, loaded(idx).logits)
