"""BDH forward: equal to the paper's equations, in every attention form and option."""
import itertools

import pytest
import torch

from bdh_scale.model import BDH, BDHState
from tests.helpers.naive_bdh import naive_logits

COMBOS = list(itertools.product(["none", "scalar", "data"], [None, 3], [False, True]))
IDS = [f"forget={f}-window={w}-diff={d}" for f, w, d in COMBOS]


def make_model(tiny_config, forget, window, diff, **kw):
    torch.manual_seed(0)
    model = BDH(tiny_config(forget_mode=forget, attn_window=window, diff_attn=diff, **kw)).eval()
    for layer in model.layers:  # gates far from 1, so a wrong decay cannot hide
        if forget == "scalar":
            layer.forget.logit.data.uniform_(-1.0, 2.0)
        if forget == "data":
            torch.nn.init.normal_(layer.forget.proj.weight, std=1.0)
            layer.forget.proj.bias.data.uniform_(-0.5, 1.5)
    return model


def logits(model, idx, backend, chunk=0, **kw):
    model.config.attn_backend, model.config.chunk_size = backend, chunk
    return model(idx, **kw)


def assert_close(a, b, rtol=1e-5):
    scale = b.abs().max().clamp_min(1e-6)
    assert (a.double() - b.double()).abs().max() <= rtol * scale + 1e-6, (a - b).abs().max()


@pytest.mark.parametrize("forget,window,diff", COMBOS, ids=IDS)
def test_parallel_equals_paper_equations(tiny_config, forget, window, diff):
    model = make_model(tiny_config, forget, window, diff)
    idx = torch.randint(0, 256, (2, 9))
    assert_close(logits(model, idx, "parallel").logits, naive_logits(model, idx))


@pytest.mark.parametrize("forget,window,diff", COMBOS, ids=IDS)
def test_chunked_and_token_by_token_equal_parallel(tiny_config, forget, window, diff):
    model = make_model(tiny_config, forget, window, diff)
    idx = torch.randint(0, 256, (2, 23))
    ref = logits(model, idx, "parallel").logits
    for chunk in (1, 4, 7, 64):  # 23 is divisible by none but 1
        assert_close(logits(model, idx, "chunked", chunk).logits, ref)
    state, steps = model.init_state(2), []
    for t in range(idx.size(1)):
        out = model(idx[:, t:t + 1], state=state)
        state = out.state
        steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), ref)


@pytest.mark.parametrize("forget,window,diff", COMBOS, ids=IDS)
def test_two_halves_with_carried_state_equal_one_pass(tiny_config, forget, window, diff):
    model = make_model(tiny_config, forget, window, diff)
    idx = torch.randint(0, 256, (2, 24))
    whole = logits(model, idx, "parallel").logits
    for backend in ("parallel", "chunked"):
        first = logits(model, idx[:, :12], backend, 5, return_state=True)
        second = logits(model, idx[:, 12:], backend, 5, state=first.state)
        assert first.state.pos == 12 and second.state.pos == 24
        assert_close(torch.cat([first.logits, second.logits], dim=1), whole)


@pytest.mark.parametrize("forget,window,diff", COMBOS, ids=IDS)
def test_chunked_gradients_equal_parallel(tiny_config, forget, window, diff):
    grads = assert_chunked_gradients_equal_parallel(make_model(tiny_config, forget, window, diff))
    assert len(grads) > 0


def assert_chunked_gradients_equal_parallel(model) -> dict:
    """The parameters' gradients of one loss in the parallel and the chunked form agree; returns them."""
    idx = torch.randint(0, 256, (2, 17))
    grads = []
    for backend, chunk in (("parallel", 0), ("chunked", 5)):
        model.zero_grad()
        logits(model, idx[:, :-1], backend, chunk, targets=idx[:, 1:]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], rtol=1e-4)
    return grads[0]


@pytest.mark.parametrize("window", [None, 3])
def test_state_survives_save_load_and_device_move(tiny_config, tmp_path, window):
    model = make_model(tiny_config, "data", window, True)
    idx = torch.randint(0, 256, (2, 16))
    state = model(idx[:, :10], return_state=True).state
    torch.save(state.state_dict(), tmp_path / "state.pt")
    loaded = BDHState.from_state_dict(torch.load(tmp_path / "state.pt"))
    moved = state.to(device="cpu", dtype=torch.float64).to(dtype=torch.float32)
    expected = model(idx[:, 10:], state=state).logits
    for s in (loaded, moved):
        assert s.pos == 10
        assert torch.equal(model(idx[:, 10:], state=s).logits, expected)


def test_reset_zeroes_only_restarted_lanes(tiny_config):
    model = make_model(tiny_config, "none", None, False)
    idx = torch.randint(0, 256, (3, 12))
    state = model(idx[:, :6], return_state=True).state
    state.reset_(torch.tensor([False, True, False]))
    out = model(idx[:, 6:], state=state).logits
    fresh = model(idx[1:2, 6:]).logits  # lane 1 as if its stream began here
    assert_close(out[1:2], fresh)
    kept = model(idx).logits[:, 6:]
    assert_close(out[[0, 2]], kept[[0, 2]])


def test_shapes_and_loss(tiny_config):
    model = BDH(tiny_config(vocab_size=100))
    idx = torch.randint(0, 100, (3, 7))
    out = model(idx, targets=idx)
    assert out.logits.shape == (3, 7, 100)
    assert out.loss.ndim == 0 and out.loss.item() > 0
    assert out.state is None
    assert model(idx, return_state=True).state.pos == 7


def test_per_layer_params_are_independent(tiny_config):
    shared = BDH(tiny_config(per_layer_params=False))
    own = BDH(tiny_config(per_layer_params=True))
    names = {n for n, _ in own.named_parameters()}
    assert {"layers.0.encoder", "layers.1.encoder", "layers.1.decoder"} <= names
    assert {"encoder", "encoder_v", "decoder"} <= {n for n, _ in shared.named_parameters()}
    assert own.num_params() > shared.num_params()


def test_generate_reads_prompt_once_and_matches_full_recompute(tiny_config):
    model = make_model(tiny_config, "scalar", None, True)
    prompt = torch.randint(0, 256, (1, 5))
    out = model.generate(prompt, 8, temperature=0)  # greedy: deterministic
    assert out.shape == (1, 13) and torch.equal(out[:, :5], prompt)
    for t in range(5, 13):  # each greedy token is the argmax of a full forward over its prefix
        assert model(out[:, :t]).logits[0, -1].argmax() == out[0, t]


@pytest.mark.parametrize("forget", ["none", "data"])
def test_in_place_state_steps_equal_fresh_states_and_spare_the_callers_state(tiny_config, forget):
    model = make_model(tiny_config, forget, None, True)
    idx = torch.randint(0, 256, (2, 14))
    with torch.no_grad():
        start = model(idx[:, :6], return_state=True).state
        kept = {i: s.rho.clone() for i, s in enumerate(start.layers)}
        fresh, owned = start, model(idx[:, :6], return_state=True).state
        for t in range(6, 14):  # token by token, and one 2-token step, as generation and prefill do
            step = idx[:, t:t + 1] if t < 12 else idx[:, 12:14]
            a = model(step, state=fresh)
            b = model(step, state=owned, update_state_in_place=True)
            assert torch.equal(a.logits, b.logits) and b.state.pos == a.state.pos
            assert all(torch.equal(x.rho, y.rho) for x, y in zip(a.state.layers, b.state.layers))
            assert all(y.rho.data_ptr() == x.rho.data_ptr() for x, y in zip(owned.layers, b.state.layers))
            fresh, owned = a.state, b.state
            if t == 12:
                break
    assert all(torch.equal(s.rho, kept[i]) for i, s in enumerate(start.layers))  # never written
    with pytest.raises(ValueError, match="no_grad"):
        model(idx[:, :1], state=fresh, update_state_in_place=True)


def test_generate_leaves_the_given_state_alone(tiny_config):
    model = make_model(tiny_config, "scalar", None, False)
    state = model(torch.randint(0, 256, (1, 7)), return_state=True).state
    before = [s.rho.clone() for s in state.layers]
    model.generate(torch.randint(0, 256, (1, 3)), 6, temperature=0, state=state)
    assert all(torch.equal(s.rho, b) for s, b in zip(state.layers, before))


def test_generate_with_max_context_predicts_from_the_windows_it_promises(tiny_config):
    model = make_model(tiny_config, "none", None, False)
    prompt, n, W = torch.randint(0, 256, (1, 11)), 20, 6
    out = model.generate(prompt, n, temperature=0, max_context=W)
    # Full forwards over the windows the rule names: the prompt's last W tokens, then grow to W
    # and restart from the last W // 2.
    start, held = prompt.size(1) - W, W
    for t in range(prompt.size(1), prompt.size(1) + n):
        assert W // 2 <= t - start <= W
        assert model(out[:, start:t]).logits[0, -1].argmax() == out[0, t]
        if held >= W:
            start, held = t + 1 - W // 2, W // 2
        else:
            held += 1
    with pytest.raises(ValueError, match="max_context"):
        model.generate(prompt, 2, max_context=W, state=model.init_state(1))


def test_phases_stay_exact_far_into_a_stream(tiny_config):
    """Scores depend on t - s only: the same tokens at position 10^7 give the same logits."""
    model = make_model(tiny_config, "none", None, False)
    idx = torch.randint(0, 256, (1, 12))
    far = model.init_state(1)
    far.pos = 10_000_000
    assert_close(model(idx, state=far).logits, model(idx).logits)


def test_gradient_checkpointing_gives_same_gradients(tiny_config):
    model = make_model(tiny_config, "data", None, True).train()
    idx = torch.randint(0, 256, (2, 10))
    grads = []
    for ckpt in (False, True):
        model.gradient_checkpointing = ckpt
        model.zero_grad()
        model(idx[:, :-1], targets=idx[:, 1:]).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-7)


def test_plain_formulation_equals_optimized_path(tiny_config):
    from bdh_scale.model.bdh.plain import PlainBDH

    for shared in (False, True):
        model = make_model(tiny_config, "none", None, False, per_layer_params=not shared)
        idx = torch.randint(0, 256, (2, 40))
        for backend in ("parallel", "chunked", "auto"):
            assert_close(logits(model, idx, backend, 16).logits, PlainBDH(model)(idx).logits, rtol=1e-4)
    with pytest.raises(ValueError, match="reference model only"):
        PlainBDH(make_model(tiny_config, "data", None, False))


# -- document boundaries -------------------------------------------------------------------------

@pytest.mark.parametrize("forget,window,diff", COMBOS, ids=IDS)
def test_a_document_boundary_equals_running_the_documents_separately(tiny_config, forget, window, diff):
    """Lane 0 starts a document at token 6, lane 1 at 0 and 15: every token after a boundary gets
    the logits of the same text run from a fresh state, in both attention forms and with a state
    carried in; the state after the window is the state of the last document alone."""
    model = make_model(tiny_config, forget, window, diff)
    idx = torch.randint(0, 256, (2, 21))
    doc_start = torch.zeros(2, 21, dtype=torch.bool)
    doc_start[0, 6] = doc_start[1, 0] = doc_start[1, 15] = True
    carried = model(torch.randint(0, 256, (2, 5)), state=model.init_state(2)).state
    for backend, chunk in (("parallel", 0), ("chunked", 4), ("chunked", 64)):
        out = logits(model, idx, backend, chunk, state=carried, doc_start=doc_start, return_state=True)
        for lane, cuts in ((0, [0, 6, 21]), (1, [0, 15, 21])):
            one = lambda s: BDHState([type(x)(**{n: t[lane:lane + 1] for n, t in x.tensors().items()})  # noqa: E731
                                      for x in s.layers], s.pos)
            state = one(carried) if lane == 0 else None  # lane 1's first document starts at 0
            for lo, hi in zip(cuts, cuts[1:]):
                # a fresh state at the same absolute position: rho holds rotated keys
                fresh = BDHState(model.init_state(1).layers, carried.pos + lo)
                piece = model(idx[lane:lane + 1, lo:hi], state=state or fresh, return_state=True)
                assert_close(out.logits[lane:lane + 1, lo:hi], piece.logits)
                state = None
            for ours, theirs in zip(out.state.layers, piece.state.layers):
                for n, t in theirs.tensors().items():
                    if n != "lg_win":  # an emptied window slot's decay is never read
                        assert_close(ours.tensors()[n][lane:lane + 1], t)


def test_no_boundary_is_the_same_as_no_mask(tiny_config):
    model = make_model(tiny_config, "data", None, False)
    idx = torch.randint(0, 256, (2, 16))
    plain = model(idx).logits
    assert torch.equal(model(idx, doc_start=torch.zeros(2, 16, dtype=torch.bool)).logits, plain)


@pytest.mark.parametrize("window", [None, 3])
def test_generation_resets_the_state_after_a_separator(tiny_config, window):
    """With doc_separator, the tokens after a separator are predicted as if the text began there."""
    model = make_model(tiny_config, "scalar", window, False)
    sep = [7, 7]
    prompt = torch.tensor([[1, 2, 3, 7, 7, 4, 5]])  # a document, the separator, a new one
    out = model.generate(prompt, 6, temperature=0, doc_separator=sep)
    fresh = model.generate(prompt[:, 5:], 6, temperature=0)
    assert torch.equal(out[:, 7:], fresh[:, 2:])
    # the prompt ends with the separator: the first generated token begins a new document, and
    # what follows it is what a fresh start from that token generates (the in-loop reset)
    out = model.generate(torch.tensor([[1, 2, 7, 7]]), 5, temperature=0, doc_separator=sep)
    assert torch.equal(out[:, 5:], model.generate(out[:, 4:5], 4, temperature=0)[:, 1:])
    # the same through the state rebuilds of max_context
    out = model.generate(torch.tensor([[1, 2, 3, 4, 7, 7]]), 5, temperature=0, doc_separator=sep, max_context=4)
    assert torch.equal(out[:, 7:], model.generate(out[:, 6:7], 4, temperature=0, max_context=4)[:, 1:])
