"""The previous-token path (model.token_shift): exact in the parallel form, the chunked form and
generation; its last inputs carried with the state; cut at document starts; in BDH-HRM too; and
models saved without it still load."""
import json

import pytest
import torch

from bdh_scale.model import BDH, BDHState, load_pretrained
from bdh_scale.model.hrm.hrm import BDHHRM
from tests.helpers.naive_bdh import naive_logits
from tests.test_model import assert_chunked_gradients_equal_parallel, assert_close, logits, make_model

# placement, kernel, forget gate, window, differential attention
CASES = [("embed", 2, "none", None, False), ("layer", 2, "data", None, True),
         ("layer", 3, "scalar", 3, False), ("embed", 4, "data", 3, True)]
IDS = [f"{p}-k{k}-forget={f}-window={w}-diff={d}" for p, k, f, w, d in CASES]


def shifted_model(tiny_config, placement, kernel, forget="none", window=None, diff=False, **kw):
    model = make_model(tiny_config, forget, window, diff, token_shift=placement, token_shift_kernel=kernel, **kw)
    for shift in model.token_shift:  # zero at init: non-zero here, so that a wrong tap cannot hide
        torch.nn.init.normal_(shift.weight, std=0.4)
    return model


def test_zero_initialised_path_starts_as_the_model_without_it(tiny_config):
    """embed: exactly. layer: up to LayerNorm's eps, since each layer's input is LN(LN(x)) there."""
    plain = make_model(tiny_config, "data", None, True)
    for placement, rtol in (("embed", 1e-5), ("layer", 1e-2)):
        shifted = make_model(tiny_config, "data", None, True, token_shift=placement, token_shift_kernel=3)
        assert all(torch.count_nonzero(s.weight) == 0 for s in shifted.token_shift)
        assert len(shifted.token_shift) == (1 if placement == "embed" else 2)
        idx = torch.randint(0, 256, (2, 11))
        assert_close(shifted(idx).logits, plain(idx).logits, rtol=rtol)


@pytest.mark.parametrize("placement,kernel,forget,window,diff", CASES, ids=IDS)
def test_parallel_equals_paper_equations_with_the_shift(tiny_config, placement, kernel, forget, window, diff):
    model = shifted_model(tiny_config, placement, kernel, forget, window, diff)
    idx = torch.randint(0, 256, (2, 9))
    assert_close(logits(model, idx, "parallel").logits, naive_logits(model, idx))


@pytest.mark.parametrize("placement,kernel,forget,window,diff", CASES, ids=IDS)
def test_halves_and_token_by_token_equal_one_pass(tiny_config, placement, kernel, forget, window, diff):
    """T = T/2 + T/2 with the state carried, in both forms, and one token at a time, as generation reads."""
    model = shifted_model(tiny_config, placement, kernel, forget, window, diff)
    idx = torch.randint(0, 256, (2, 24))
    whole = logits(model, idx, "parallel").logits
    for backend in ("parallel", "chunked"):
        first = logits(model, idx[:, :12], backend, 5, return_state=True)
        assert len(first.state.shift) == len(model.token_shift)
        assert all(s.shape == (2, kernel - 1, 16) for s in first.state.shift)
        second = logits(model, idx[:, 12:], backend, 5, state=first.state)
        assert_close(torch.cat([first.logits, second.logits], dim=1), whole)
    state, steps = model.init_state(2), []
    for t in range(idx.size(1)):
        out = model(idx[:, t:t + 1], state=state)
        state, steps = out.state, steps + [out.logits]
    assert_close(torch.cat(steps, dim=1), whole)
    with torch.no_grad():  # generation's in-place steps carry the shift too
        owned = model(idx[:, :1], return_state=True).state
        for t in range(1, 6):
            owned = model(idx[:, t:t + 1], state=owned, update_state_in_place=True).state
        assert_close(model(idx[:, 6:], state=owned).logits, whole[:, 6:])


@pytest.mark.parametrize("placement,kernel,forget,window,diff", CASES[:2], ids=IDS[:2])
def test_chunked_gradients_equal_parallel_with_the_shift(tiny_config, placement, kernel, forget, window, diff):
    grads = assert_chunked_gradients_equal_parallel(shifted_model(tiny_config, placement, kernel, forget, window, diff))
    assert any(n.startswith("token_shift.") for n in grads)


def one_lane(state: BDHState, lane: int) -> BDHState:
    return BDHState([type(x)(**{n: t[lane:lane + 1] for n, t in x.tensors().items()}) for x in state.layers],
                    state.pos, [s[lane:lane + 1] for s in state.shift])


@pytest.mark.parametrize("placement,kernel", [("embed", 3), ("layer", 2)])
def test_a_document_start_cuts_the_shift_like_the_state(tiny_config, placement, kernel):
    """Tokens after a boundary get the logits of their document run from a fresh state (no input
    of the earlier document mixed in), with a state carried in, and the state after the window
    (the shift's inputs included) is that of the last document alone; a boundary one token
    before the window's end leaves the next window only that document's input."""
    model = shifted_model(tiny_config, placement, kernel, "data")
    idx = torch.randint(0, 256, (2, 21))
    doc_start = torch.zeros(2, 21, dtype=torch.bool)
    doc_start[0, 6] = doc_start[1, 0] = doc_start[1, 20] = True
    carried = model(torch.randint(0, 256, (2, 5)), state=model.init_state(2)).state
    for backend, chunk in (("parallel", 0), ("chunked", 4)):
        out = logits(model, idx, backend, chunk, state=carried, doc_start=doc_start, return_state=True)
        for lane, cuts in ((0, [0, 6, 21]), (1, [0, 20, 21])):
            state = one_lane(carried, lane) if lane == 0 else None
            for lo, hi in zip(cuts, cuts[1:]):
                fresh = BDHState(model.init_state(1).layers, carried.pos + lo)
                piece = model(idx[lane:lane + 1, lo:hi], state=state or fresh, return_state=True)
                assert_close(out.logits[lane:lane + 1, lo:hi], piece.logits)
                state = None
            for ours, theirs in zip(out.state.shift, piece.state.shift):
                assert_close(ours[lane:lane + 1], theirs)
        nxt = torch.randint(0, 256, (2, 4))
        after = model(nxt, state=out.state).logits[1:2]
        alone = model(torch.cat([idx[1:2, 20:], nxt[1:2]], dim=1), state=BDHState(model.init_state(1).layers,
                                                                                   carried.pos + 20)).logits
        assert_close(after, alone[:, 1:])


def test_a_reset_lane_forgets_its_shift_inputs(tiny_config):
    model = shifted_model(tiny_config, "layer", 3)
    idx = torch.randint(0, 256, (3, 12))
    state = model(idx[:, :6], return_state=True).state
    state.reset_(torch.tensor([False, True, False]))
    out = model(idx[:, 6:], state=state).logits
    assert_close(out[1:2], model(idx[1:2, 6:]).logits)
    assert_close(out[[0, 2]], model(idx).logits[:, 6:][[0, 2]])


def test_greedy_generation_with_the_shift_matches_full_recompute(tiny_config):
    model = shifted_model(tiny_config, "layer", 2, "scalar")
    prompt = torch.randint(0, 256, (1, 5))
    out = model.generate(prompt, 8, temperature=0)
    for t in range(5, 13):
        assert model(out[:, :t]).logits[0, -1].argmax() == out[0, t]


@pytest.mark.parametrize("placement", ["embed", "layer"])
def test_hybrid_takes_the_shift_and_keeps_documents_apart(tiny_config, placement):
    torch.manual_seed(0)
    model = BDHHRM(tiny_config(arch="bdh_hrm", token_shift=placement, token_shift_kernel=2)).eval()
    shifts = [m for n, m in model.named_modules() if n.endswith("token_shift")]
    assert sum(len(m) for m in shifts) == (1 if placement == "embed" else 4)  # 2 L and 2 H layers
    for m in shifts:
        for s in m:
            torch.nn.init.normal_(s.weight, std=0.4)
    idx = torch.randint(0, 256, (1, 14))
    doc_start = torch.zeros(1, 14, dtype=torch.bool)
    doc_start[0, 8] = True
    out = model(idx, doc_start=doc_start).logits
    assert_close(out[:, 8:], model(idx[:, 8:]).logits)
    assert not torch.allclose(model(idx).logits[:, 8:], out[:, 8:])  # without the cut it reads the first document


def test_models_and_states_saved_before_the_path_still_load(tiny_config, tmp_path):
    """A model directory whose config.json has no token_shift keys (as written before the option
    existed) loads as the model without it, and a state dict without shift inputs continues it."""
    model = make_model(tiny_config, "data", None, False)
    model.save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    for key in ("token_shift", "token_shift_kernel"):
        cfg.pop(key, None)
    cfg_file.write_text(json.dumps(cfg))
    loaded = load_pretrained(str(tmp_path / "m"))
    assert isinstance(loaded, BDH) and loaded.config.token_shift == "none" and len(loaded.token_shift) == 0
    idx = torch.randint(0, 256, (2, 10))
    assert torch.equal(loaded.eval()(idx).logits, model(idx).logits)
    state = model(idx[:, :5], return_state=True).state
    saved = state.state_dict()
    assert "shift" not in saved  # as states were saved before
    old = BDHState.from_state_dict(saved)
    assert torch.equal(loaded(idx[:, 5:], state=old).logits, model(idx[:, 5:], state=state).logits)
