import pytest
import torch

from bdh_scale.model.gpt.gpt import GPT, GPTConfig
from bdh_scale.model.output import ModelOutput


def tiny(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 50, "block_size": 16, **kw}))
    for shift in model.token_shift:  # zero at initialisation: random taps, or a lost tap would change nothing
        torch.nn.init.normal_(shift.weight, std=0.3)
    return model


PATHS = [{}, {"token_shift": "embed"}, {"token_shift": "layer", "token_shift_kernel": 3}]
PATH_IDS = ["none", "embed", "layer_k3"]


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


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_a_document_boundary_equals_running_the_documents_separately(path):
    model = tiny(**path).eval()
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


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_save_and_load_pretrained_round_trip(tmp_path, path):
    from bdh_scale.model import load_pretrained

    model = tiny(**path).eval()
    model.save_pretrained(tmp_path / "final")
    loaded = load_pretrained(tmp_path / "final").eval()
    assert isinstance(loaded, GPT)
    idx = torch.randint(0, 50, (1, 8))
    assert torch.equal(model(idx).logits, loaded(idx).logits)


@pytest.mark.parametrize("mode", ["embed", "layer"])
def test_the_previous_token_path_starts_as_the_plain_model_and_reads_the_tokens_before(mode):
    """Zero-initialised, the path changes nothing; trained, token t's output depends on the tokens
    before it through the path as well (k = 3: the two before), and still never on a later one."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=50, block_size=16)).eval()
    torch.manual_seed(0)
    fresh = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=50, block_size=16, token_shift=mode,
                          token_shift_kernel=3)).eval()
    assert len(fresh.token_shift) == {"embed": 1, "layer": 2}[mode]
    assert fresh.num_params() == plain.num_params() + len(fresh.token_shift) * 2 * 32 * 32
    idx = torch.randint(0, 50, (2, 12))
    assert torch.equal(plain(idx).logits, fresh(idx).logits)
    trained = tiny(token_shift=mode, token_shift_kernel=3).eval()
    for shift in trained.token_shift:
        shift.weight.data *= 10  # loud enough to see through the attention's own mixing
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    a, b = trained(idx).logits, trained(changed).logits
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    # with the attention silenced, token 5 still reaches the next 2 positions through each shift
    # (two taps), so 2 (embed) or 4 (layer: two stacked) positions after it, and no further
    for block in trained.blocks:
        block.attn.proj.weight.data.zero_()
    a, b = trained(idx).logits, trained(changed).logits
    reach = 2 * len(trained.token_shift)
    assert all(not torch.allclose(a[:, t], b[:, t]) for t in range(6, 6 + reach))
    assert torch.allclose(a[:, 6 + reach:], b[:, 6 + reach:], atol=1e-6)
