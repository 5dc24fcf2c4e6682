"""The chunked recurrent attention equals the parallel oracle, carries its state exactly, and
stays finite; for every gate {none, per head, per token} x window {None, 4, 16} x {q is k,
differential q != k}.

fp32 tolerances are relative to the largest entry: 1e-5 for outputs, 5e-5 for gradients. The
oracle itself is the looser side there (its decays come from one cumulative sum over the whole
sequence, the chunked form's from per-chunk sums); in float64 the two agree to 1e-10.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

from bdh_scale.model.bdh.attention import AttnState, attend_chunked, attend_parallel, pick_backend

B, H, N, D = 2, 2, 24, 8
SCALE = N**-0.5
CASES = list(itertools.product(["none", "per_head", "per_token"], [None, 4, 16], ["q_is_k", "differential"]))
IDS = [f"{g}-w{w}-{qk}" for g, w, qk in CASES]


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gate: torch.Tensor | None  # the leaf: (H,) per head, (B, H, T) per token
    window: int | None

    @property
    def T(self) -> int:
        return self.q.size(-2)

    def log_g(self) -> torch.Tensor | None:
        if self.gate is None or self.gate.dim() == 3:
            return self.gate
        return self.gate[None, :, None].expand(B, H, self.T)

    def leaves(self) -> list[torch.Tensor]:
        xs = [self.q, self.v] if self.k is self.q else [self.q, self.k, self.v]
        return xs + ([self.gate] if self.gate is not None else [])

    def parallel(self):
        return attend_parallel(self.q, self.k, self.v, SCALE, self.log_g(), self.window)

    def chunked(self, lo=0, hi=None, state=None, chunk_size=64, **kw):
        """attend_chunked over tokens [lo, hi), continuing from state."""
        sl = slice(lo, hi)
        lg = self.log_g()
        q, k, v = self.q[:, :, sl], self.k[:, :, sl], self.v[:, :, sl]
        lg = None if lg is None else lg[..., sl]
        return attend_chunked(q, k, v, SCALE, state, lg, self.window, chunk_size, **kw)


def make(gate, window, qk, T, seed=0, dtype=torch.float32, grad=False) -> Inputs:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if qk == "q_is_k":  # BDH: q = k = relu(x E), v = x shared by the heads
        q = torch.relu(rand(B, H, T, N))
        k, v = q, rand(B, 1, T, D)
    else:  # differential attention: k = [q1, q2], q = [q1, -lambda q2]; one v per head
        q1, q2 = torch.relu(rand(B, H, T, N // 2)), torch.relu(rand(B, H, T, N // 2))
        q, k, v = torch.cat([q1, -0.7 * q2], -1), torch.cat([q1, q2], -1), rand(B, H, T, D)
    lg = {"none": None, "per_head": -0.1 - torch.rand(H, generator=g).to(dtype),
          "per_token": -0.5 * torch.rand(B, H, T, generator=g).to(dtype)}[gate]
    x = Inputs(q, k, v, lg, window)
    if grad:
        for leaf in x.leaves():
            leaf.requires_grad_()
    return x


def assert_close(actual, expected, rel=1e-5):
    err = (actual - expected).abs().max().item()
    assert err <= rel * max(expected.abs().max().item(), 1e-30), f"max error {err:.3g}"


def grads(out, leaves, seed=1):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), leaves)


@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_chunked_equals_parallel(gate, window, qk):
    x = make(gate, window, qk, T=37)
    ref = x.parallel()
    for C in (1, 5, 16, 64):  # 37 is not a multiple of 5 or 16; 64 is one chunk
        assert_close(x.chunked(chunk_size=C)[0], ref)


@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_token_by_token_equals_parallel(gate, window, qk):
    x = make(gate, window, qk, T=23)
    state, outs = None, []
    for t in range(x.T):
        a, state = x.chunked(t, t + 1, state)
        outs.append(a)
        # The carried state does not grow with the context: each step costs the same.
        shapes = {name: tuple(s.shape) for name, s in state.tensors().items()}
        if window is None:
            assert shapes == {"rho": (B, H, N, D)}
        else:
            Hv = x.v.size(1)
            assert shapes == {"k_win": (B, H, window, N), "v_win": (B, Hv, window, D), "lg_win": (B, H, window)}
    assert_close(torch.cat(outs, dim=-2), x.parallel())


@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_two_calls_with_carried_state_equal_one_call(gate, window, qk):
    x = make(gate, window, qk, T=38, grad=True)
    a, state = x.chunked(chunk_size=8)
    a1, s1 = x.chunked(0, 19, chunk_size=8)
    a2, s2 = x.chunked(19, None, s1, chunk_size=8)
    a12 = torch.cat([a1, a2], dim=-2)
    assert_close(a12, a)
    for name, t in state.tensors().items():
        assert_close(s2.tensors()[name], t)
    # Without a detach, gradients flow back through the carried state as through one call.
    for g12, g in zip(grads(a12, x.leaves()), grads(a, x.leaves())):
        assert_close(g12, g)


@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_chunked_gradients_equal_parallel(gate, window, qk):
    x = make(gate, window, qk, T=29, grad=True)
    ref = grads(x.parallel(), x.leaves())
    for C in (5, 16):
        for g, r in zip(grads(x.chunked(chunk_size=C)[0], x.leaves()), ref):
            assert_close(g, r, rel=5e-5)


@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_chunked_gradients_equal_parallel_exactly_in_float64(gate, window, qk):
    x = make(gate, window, qk, T=29, dtype=torch.float64, grad=True)
    a, state = x.chunked(chunk_size=5)
    assert a.dtype == torch.float64 and all(t.dtype == torch.float64 for t in state.tensors().values())
    for g, r in zip(grads(a, x.leaves()), grads(x.parallel(), x.leaves())):
        assert_close(g, r, rel=1e-10)


def test_gradient_reaches_the_incoming_state():
    # rho is a sum over the past: d a / d rho_0 equals d a / d (the keys that built it).
    x = make("per_token", None, "differential", T=20, grad=True)
    _, s1 = x.chunked(0, 12, chunk_size=4)
    rho0 = s1.rho.detach().requires_grad_()
    a2, _ = x.chunked(12, None, AttnState(rho=rho0), chunk_size=3)
    (g_rho0,) = grads(a2, [rho0])
    (g_rho1,) = grads(x.chunked(12, None, s1, chunk_size=3)[0], [s1.rho])
    assert_close(g_rho0, g_rho1)
    assert g_rho0.abs().max() > 0


@pytest.mark.parametrize("window", [None, 4])
def test_state_survives_checkpoint_and_moves(window):
    x = make("per_token", window, "q_is_k", T=30)
    _, state = x.chunked(0, 17, chunk_size=5)
    expected, _ = x.chunked(17, None, state, chunk_size=5)
    restored = AttnState.from_state_dict({k: t.clone() for k, t in state.state_dict().items()})
    wide = state.to(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in wide.tensors().values())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    moved = wide.to(device=device).to(device="cpu", dtype=torch.float32)
    for s in (restored, moved):
        assert s.tensors().keys() == state.tensors().keys()
        assert all(torch.equal(s.tensors()[k], t) for k, t in state.tensors().items())
        assert torch.equal(x.chunked(17, None, s, chunk_size=5)[0], expected)
    # A float64 state is used at the call's precision (fp32 here) and gives the same tokens.
    assert_close(x.chunked(17, None, wide, chunk_size=5)[0], expected)
    assert state.detach().window == window


@pytest.mark.parametrize("window", [None, 4])
def test_reset_zeroes_exactly_the_masked_lanes(window):
    x = make("per_head", window, "q_is_k", T=24)
    _, state = x.chunked(0, 12)
    before = {k: t.clone() for k, t in state.tensors().items()}
    assert state.reset_(torch.tensor([True, False])) is state  # the object is updated in place
    for name, t in state.tensors().items():
        assert torch.all(t[0] == 0) and torch.equal(t[1], before[name][1])
    # The restarted lane goes on exactly as a fresh stream starting at token 12.
    a, _ = x.chunked(12, None, state)
    fresh, _ = x.chunked(12, None, None)
    assert_close(a[0], fresh[0])
    assert not torch.allclose(a[1], fresh[1])


@pytest.mark.parametrize("window", [None, 16])
def test_strong_forgetting_stays_finite(window):
    x = make("none", window, "q_is_k", T=300, grad=True)
    x.gate = torch.full((B, H, 300), -30.0, requires_grad=True)  # g = 1e-13 per token
    a, state = x.chunked(chunk_size=64)
    assert all(torch.isfinite(t).all() for t in [a, *state.tensors().values()])
    assert_close(a, x.parallel())
    assert all(torch.isfinite(g).all() for g in grads(a, x.leaves()))


@pytest.mark.parametrize("window", [None, 4])
def test_stateless_skip_gives_the_same_output(window):
    x = make("per_token", window, "differential", T=21)
    a, state = x.chunked(chunk_size=8, need_state=False)
    assert state is None
    assert torch.equal(a, x.chunked(chunk_size=8)[0])


@pytest.mark.parametrize("window", [None, 4])
def test_half_inputs_keep_an_fp32_state(window):
    x = make("per_token", window, "q_is_k", T=20)
    ref, _ = x.chunked(chunk_size=8)
    q = x.q.bfloat16()
    a, state = Inputs(q, q, x.v.bfloat16(), x.gate, window).chunked(chunk_size=8)
    assert a.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in state.tensors().values())
    assert_close(a.float(), ref, rel=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast would run q @ rho in bf16
        _, state = x.chunked(chunk_size=8)
    assert all(t.dtype == torch.float32 for t in state.tensors().values())


def test_state_of_the_wrong_kind_is_refused():
    x = make("none", 4, "q_is_k", T=8)
    with pytest.raises(ValueError, match="window"):
        x.chunked(state=AttnState.zeros(B, H, 1, N, D))


def test_pick_backend_is_parallel_for_short_and_chunked_for_long_sequences():
    for N, D in [(512, 128), (2048, 256)]:
        assert pick_backend(128, N, D)[0] == "parallel"
        backend, C = pick_backend(4096, N, D)
        assert backend == "chunked" and C & (C - 1) == 0  # a power of two
    backend, C = pick_backend(4096, 2048, 256, window=512)
    assert backend == "chunked" and C >= 512


# -- document boundaries: the state is reset right before a document's first token ---------------

BOUNDARIES = [[0, 11], [7, 23], [], [30]]  # per lane (B = 2 here: lanes 0, 1; the last two for T = 37)


def doc_start_mask(T: int, lanes: list[list[int]]) -> torch.Tensor:
    m = torch.zeros(B, T, dtype=torch.bool)
    for b, starts in enumerate(lanes[:B]):
        m[b, starts] = True
    return m


def split_oracle(x: Inputs, lane: int, starts: list[int], state: AttnState | None, chunk_size: int):
    """One lane, document by document: each piece from a fresh state (the first from `state`)."""
    cuts = sorted(set([0, *starts, x.T]))
    outs = []
    for lo, hi in zip(cuts, cuts[1:]):
        lg = x.log_g()
        one = lambda t: t[lane:lane + 1, :, lo:hi]  # noqa: E731
        q, k, v = one(x.q), one(x.k), one(x.v)
        st = state if lo == 0 and lo not in starts else None
        a, state = attend_chunked(q, k, v, SCALE, st, None if lg is None else one(lg), x.window, chunk_size)
        outs.append(a)
    return torch.cat(outs, dim=-2), state


@pytest.mark.parametrize("lanes", [BOUNDARIES[:2], BOUNDARIES[2:]], ids=["early", "late-or-none"])
@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_a_window_with_a_document_boundary_equals_its_halves_run_separately(gate, window, qk, lanes):
    x = make(gate, window, qk, T=37)
    mask = doc_start_mask(x.T, lanes)
    incoming = x.chunked(0, 9, chunk_size=4)[1]  # a state from an earlier stretch of the lanes
    incoming = AttnState(**{name: t.detach() for name, t in incoming.tensors().items()})
    for C in (1, 5, 16, 64):
        a, state = attend_chunked(x.q, x.k, x.v, SCALE, incoming, x.log_g(), x.window, C, doc_start=mask[:, None])
        for lane, starts in enumerate(lanes):
            one = AttnState(**{name: t[lane:lane + 1] for name, t in incoming.tensors().items()})
            ref_a, ref_state = split_oracle(x, lane, starts, one, chunk_size=7)
            assert_close(a[lane:lane + 1], ref_a)
            assert_same_state(AttnState(**{n: t[lane:lane + 1] for n, t in state.tensors().items()}), ref_state)
    fresh = attend_parallel(x.q, x.k, x.v, SCALE, x.log_g(), x.window, doc_start=mask[:, None])
    assert_close(attend_chunked(x.q, x.k, x.v, SCALE, None, x.log_g(), x.window, 8, doc_start=mask[:, None])[0],
                 fresh)


def assert_same_state(state: AttnState, ref: AttnState):
    """Equal states. A window slot with a zero key is empty (nothing reads it), so its decay
    lg_win may differ: it counts from wherever the slot was emptied."""
    for name, t in ref.tensors().items():
        ours = state.tensors()[name]
        if name == "lg_win":
            filled = ref.k_win.abs().sum(-1) > 0
            t, ours = t * filled, ours * filled
        assert_close(ours, t)


@pytest.mark.parametrize("gate,window,qk", CASES, ids=IDS)
def test_chunked_gradients_with_boundaries_equal_parallel(gate, window, qk):
    x = make(gate, window, qk, T=29, grad=True)
    mask = doc_start_mask(x.T, [[3, 17], [0, 28]])[:, None]
    ref = grads(attend_parallel(x.q, x.k, x.v, SCALE, x.log_g(), x.window, doc_start=mask), x.leaves())
    for C in (5, 16):
        out = attend_chunked(x.q, x.k, x.v, SCALE, None, x.log_g(), x.window, C, doc_start=mask)[0]
        for g, r in zip(grads(out, x.leaves()), ref):
            assert_close(g, r, rel=5e-5)


def test_gradients_do_not_cross_a_boundary():
    x = make("per_token", None, "differential", T=24, grad=True)
    mask = doc_start_mask(x.T, [[10], [10]])[:, None]
    a = attend_chunked(x.q, x.k, x.v, SCALE, None, x.log_g(), None, 4, doc_start=mask)[0]
    *g_qkv, g_gate = torch.autograd.grad(a[:, :, 10:].sum(), [x.q, x.k, x.v, x.gate])
    assert all(t[:, :, :10].abs().max() == 0 for t in g_qkv)  # nothing after the boundary depends on before
    # the gates' gradient is a reverse cumulative sum, so the terms that cancel leave rounding
    assert g_gate[:, :, :10].abs().max() <= 1e-5 * g_gate.abs().max()
