"""model.attn_backend=fla: the adapter onto flash-linear-attention's chunk_simple_gla contract equals
BDH's exact forms, proven on the CPU with the plain-PyTorch stand-in of that contract
(model/bdh/attention/fla_reference.py; the Triton kernel itself runs only in `make gpu-check`).

* the stand-in is fla's contract: [B, T, H, K] layout, inclusive causal read, default scale
  K^-1/2, per-sequence initial and final states, cu_seqlens as sequences laid end to end;
* the adapter (query shift, shared value expanded, BDH's scale, rho as initial and final state,
  documents as cu_seqlens) equals attend_chunked in outputs, final state and the gradients of q,
  k, v, log g and the initial state, fp32, for every gate, q = k or not, with and without
  document boundaries (at a window's first and last token too);
* the whole model with it equals the chunked model (logits, state, every parameter's gradient),
  two windows with the state carried equal one window of both (TBPTT, validation as trained),
  and generation gives the same tokens;
* asking for it where it cannot run is one error; auto takes it where it measured faster.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from bdh_scale.errors import ConfigError
from bdh_scale.model import BDH, ModelConfig
from bdh_scale.model.bdh.attention import AttnState, attend_chunked, fla
from bdh_scale.model.bdh.attention.fla_reference import simple_gla_reference
from bdh_scale.model.bdh.attention.fla_tune import fla_wins, tune

H, B, T, N, D = 2, 2, 40, 16, 8
SCALE = 0.37  # not fla's default N^-1/2: the adapter must pass BDH's own


def close(a, b, tol):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item()), (a - b).abs().max().item()


# -- the stand-in is fla's contract ---------------------------------------------------------------

def test_reference_reads_inclusively_in_flas_layout_with_its_default_scale():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 9, 3, 4, generator=g), torch.randn(2, 9, 3, 4, generator=g)
    v = torch.randn(2, 9, 3, 5, generator=g)
    o, ht = simple_gla_reference(q, k, v, output_final_state=True)
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril() * 4 ** -0.5  # the diagonal included
    close(o, torch.einsum("bhts,bshv->bthv", scores, v), 1e-5)
    close(ht, torch.einsum("bthk,bthv->bhkv", k, v), 1e-5)


def test_reference_cu_seqlens_are_sequences_end_to_end_each_from_its_own_state():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 11, 2, 4, generator=g), torch.randn(1, 11, 2, 4, generator=g)
    v, gate = torch.randn(1, 11, 2, 3, generator=g), -torch.rand(1, 11, 2, generator=g)
    h0 = torch.randn(3, 2, 4, 3, generator=g)
    cu = torch.tensor([0, 4, 5, 11])
    o, ht = simple_gla_reference(q, k, v, gate, 0.5, h0, True, cu_seqlens=cu)
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        o_n, h_n = simple_gla_reference(q[:, a:b], k[:, a:b], v[:, a:b], gate[:, a:b], 0.5, h0[n:n + 1], True)
        close(o[:, a:b], o_n, 1e-6)
        close(ht[n:n + 1], h_n, 1e-6)
    with pytest.raises(ValueError, match="batch size is expected to be 1"):
        simple_gla_reference(q.expand(2, -1, -1, -1), k, v, cu_seqlens=cu)
    with pytest.raises(ValueError, match="number of initial states"):
        simple_gla_reference(q, k, v, initial_state=h0[:2], cu_seqlens=cu)


# -- the adapter equals our exact forms -----------------------------------------------------------

def boundaries(kind):
    if kind is None:
        return None
    ds = torch.zeros(B, T, dtype=torch.bool)
    ds[0, 13] = ds[0, T - 1] = True  # inside a window, and its last token
    ds[1, 0] = ds[1, 21] = ds[1, 22] = True  # its first token, and a one-token document
    return ds


def leaves(gate, qk, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.rand(H, B, T, N, generator=g).requires_grad_()
    q = k if qk == "q_is_k" else torch.randn(H, B, T, N, generator=g).requires_grad_()
    v = torch.randn(1, B, T, D, generator=g).requires_grad_()  # shared by the heads, as BDH's
    rho = torch.randn(B, H, N, D, generator=g).requires_grad_()  # a carried state, lanes-first
    lg = {"none": None, "per_head": -torch.rand(H, generator=g) * 0.3,
          "per_token": -torch.rand(H, B, T, generator=g) * 0.3}[gate]
    if lg is not None:
        lg.requires_grad_()
    return q, k, v, rho, lg


CASES = list(itertools.product(["none", "per_head", "per_token"], ["q_is_k", "differential"], [None, "docs"]))


@pytest.mark.parametrize("gate,qk,docs", CASES, ids=[f"{g}-{q}-{d}" for g, q, d in CASES])
def test_adapter_equals_the_chunked_form_outputs_state_and_all_gradients(gate, qk, docs):
    ds = boundaries(docs)

    def run(form):
        q, k, v, rho, lg = leaves(gate, qk)
        log_g = None if lg is None else (lg[:, None, None].expand(H, B, T) if lg.dim() == 1 else lg)
        if form == "fla":
            with fla.stand_in():
                a, state = fla.attend_fla(q, k, v, SCALE, rho, log_g, True, ds)
        else:  # ours, heads-first with the state swapped to it, chunks of 16
            a, st = attend_chunked(q, k, v, SCALE, AttnState(rho=rho).swap_lanes_heads(), log_g, None, 16, True,
                                   doc_start=None if ds is None else ds[None])
            state = st.swap_lanes_heads().rho
        w = torch.randn(a.shape, generator=torch.Generator().manual_seed(7))
        wr = torch.randn(state.shape, generator=torch.Generator().manual_seed(8))
        ((a * w).sum() + (state * wr).sum()).backward()  # both outputs reach the gradients
        grads = {name: x.grad for name, x in zip("qkvrg", (q, k, v, rho, lg)) if x is not None}
        return a.detach(), state.detach(), grads

    a_f, s_f, g_f = run("fla")
    a_c, s_c, g_c = run("chunked")
    close(a_f, a_c, 1e-5)
    close(s_f, s_c, 1e-5)
    assert g_f.keys() == g_c.keys() and {"q", "v", "r"} <= g_f.keys()
    for name in g_c:
        close(g_f[name], g_c[name], 5e-5)


def test_adapter_without_state_or_returned_state_reads_from_zero():
    q, k, v, _, lg = leaves("per_token", "q_is_k", seed=3)
    with fla.stand_in():
        a, state = fla.attend_fla(q, k, v, SCALE, None, lg, need_state=False, doc_start=boundaries("docs"))
    ours, _ = attend_chunked(q, k, v, SCALE, None, lg, None, 16, False, doc_start=boundaries("docs")[None])
    assert state is None
    close(a, ours, 1e-5)


# -- the whole model ------------------------------------------------------------------------------

TINY = dict(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=2, dropout=0.0, vocab_size=64)


def model(backend, **kw):
    torch.manual_seed(0)
    return BDH(ModelConfig(**TINY, attn_backend=backend, **kw))


@pytest.mark.parametrize("kw", [dict(forget_mode="data"), dict(forget_mode="scalar", diff_attn=True, score_scale="none")],
                         ids=["data_gate", "scalar_gate-diff-unscaled"])
def test_model_with_fla_equals_chunked_with_a_carried_state_and_documents(kw):
    idx = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(0))
    ds = torch.zeros(2, 32, dtype=torch.bool)
    ds[0, 9] = ds[1, 0] = True
    outs = {}
    for backend in ("chunked", "fla"):
        m = model(backend, **kw)
        with torch.no_grad(), fla.stand_in():
            state = m(idx[:, :16], return_state=True).state  # carried in from an earlier window
        with fla.stand_in():
            out = m(idx[:, :-1], idx[:, 1:], state=state, doc_start=ds)
        out.loss.backward()
        outs[backend] = (out, [p.grad for p in m.parameters()])
    (oc, gc), (of, gf) = outs["chunked"], outs["fla"]
    close(of.logits, oc.logits, 1e-5)
    for sf, sc in zip(of.state.layers, oc.state.layers):
        close(sf.rho, sc.rho, 1e-5)
    assert of.state.pos == oc.state.pos == 48
    for a, b in zip(gf, gc):
        close(a, b, 5e-5)


def test_two_windows_carried_through_fla_equal_one_window_of_both():
    m = model("fla", forget_mode="data")
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), fla.stand_in():
        first = m(idx[:, :24], return_state=True)
        second = m(idx[:, 24:], state=first.state)
        whole = model("chunked", forget_mode="data")(idx)
    close(torch.cat([first.logits, second.logits], dim=1), whole.logits, 1e-5)


def test_generation_with_fla_gives_the_tokens_of_the_chunked_form():
    prompt = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    runs = []
    for backend in ("chunked", "fla"):
        with fla.stand_in():
            runs.append(model(backend, forget_mode="data").generate(prompt, 10, top_k=5,
                                                                     generator=torch.Generator().manual_seed(3)))
    assert torch.equal(runs[0], runs[1])


# -- where it cannot run, and auto ----------------------------------------------------------------

def test_fla_has_no_window_and_says_so():
    with pytest.raises(ConfigError, match="model.attn_backend: fla has no local window"):
        ModelConfig(**TINY, attn_backend="fla", attn_window=8).check()


def test_training_with_fla_on_a_cpu_is_one_error_before_anything_is_written(tmp_path):
    from tests.helpers.tiny_runs import train_in_process

    with pytest.raises(ConfigError, match=r"^model.attn_backend=fla: .* CUDA GPUs, and this device is cpu; use"):
        train_in_process(tmp_path, "fla", "model.attn_backend=fla", "train.max_steps=1")
    assert list(tmp_path.iterdir()) == []


def test_a_model_saved_with_fla_still_runs_where_fla_cannot_with_a_warning():
    idx = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(4))
    fla.warn_fallback.cache_clear()
    with pytest.warns(UserWarning, match="attn_backend=fla: .* chunked form"):
        logits = model("fla")(idx).logits
    close(logits, model("chunked")(idx).logits, 1e-6)


def test_auto_takes_fla_exactly_at_the_lengths_where_it_measured_faster():
    m = model("auto", forget_mode="data")
    with fla.stand_in():
        found = tune(m.config, [8, 16], batch_size=2, device=torch.device("cpu"), dtype=torch.float32, stateful=True)
        assert set(found) == {8, 16}
        for T, r in found.items():
            others = {k: v for k, v in r.items() if k != "chosen"}
            assert set(others) == {"fla", "parallel"} and r["chosen"] == min(others, key=others.get)
        m.fla_lengths = fla_wins({8: {"fla": 1.0, "parallel": 2.0, "chosen": "fla"}, **{16: found[16]}})
        assert m.plan(8, True, True).kind == "fla"
        assert (m.plan(16, True, True).kind == "fla") == (found[16]["chosen"] == "fla")
        forced = model("fla")
        assert forced.plan(1, True, True).kind == "fla"
        assert forced.plan(1, True, True, in_place=True).kind != "fla"  # generation steps stay the in-place step
    assert tune(model("chunked").config, [8], 2, torch.device("cpu"), torch.float32, False) == {}
    assert tune(model("auto").config, [8], 2, torch.device("cpu"), torch.float32, False) == {}  # no fla here
