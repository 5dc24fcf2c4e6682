import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdh_scale.train.optim.build import build_optimizer, split_params
from bdh_scale.train.optim.muon import MuonWithAdamW, adjusted_lr, zeropower_via_newtonschulz
from bdh_scale.train.schedule import make_scheduler


class TinyBDHLike(nn.Module):
    """BDH's parameter layout at toy size: x @ W projections, 3-D per-head encoders, gains."""

    def __init__(self, vocab=11, D=8, nh=2, N=6, n_layer=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, D)
        self.layers = nn.ModuleList()
        for _ in range(n_layer):
            layer = nn.Module()
            layer.encoder = nn.Parameter(torch.randn(nh, D, N) * 0.2)
            layer.encoder_v = nn.Parameter(torch.randn(nh, D, N) * 0.2)
            layer.decoder = nn.Parameter(torch.randn(nh * N, D) * 0.2)
            layer.diff_lambda = nn.Parameter(torch.full((nh,), 0.5))
            layer.forget = nn.Module()
            layer.forget.bias = nn.Parameter(torch.zeros(nh))
            self.layers.append(layer)
        self.lm_head = nn.Parameter(torch.randn(D, vocab) * 0.2)

    def forward(self, idx, targets):
        x = F.layer_norm(self.embed(idx), (self.embed.embedding_dim,))
        for layer in self.layers:
            xs = F.relu(torch.einsum("btd,hdn->bhtn", x, layer.encoder)) * layer.diff_lambda[None, :, None, None]
            ys = F.relu(torch.einsum("btd,hdn->bhtn", x, layer.encoder_v)) + layer.forget.bias[None, :, None, None]
            y = (xs * ys).permute(0, 2, 1, 3).flatten(2) @ layer.decoder
            x = F.layer_norm(x + y, (x.size(-1),))
        logits = x @ self.lm_head
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def batch(seed=0, vocab=11):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (3, 5), generator=g)
    return idx, torch.roll(idx, -1, dims=1)


def names(roles, key):
    return sorted(n for n, _ in roles[key])


# -- Newton-Schulz ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (4, 16, 64), (3, 64, 16), (2, 3, 20, 30)])
def test_newton_schulz_singular_values_in_muon_band(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(zeropower_via_newtonschulz(g).float())
    assert zeropower_via_newtonschulz(g).shape == g.shape
    assert s.min() > 0.5 and s.max() < 1.5


def test_newton_schulz_is_per_matrix_in_a_batch():
    g = torch.randn(3, 8, 24, generator=torch.Generator().manual_seed(2))
    g[1] *= 1000.0  # one head's scale must not leak into the others
    batched = zeropower_via_newtonschulz(g)
    for h in range(3):
        assert torch.equal(batched[h], zeropower_via_newtonschulz(g[h]))


def test_newton_schulz_matches_torch_on_matrices():
    torch_muon = pytest.importorskip("torch.optim._muon")
    for shape in [(40, 24), (24, 40)]:
        g = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        ref = torch_muon._zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        assert torch.allclose(zeropower_via_newtonschulz(g).float(), ref.float(), atol=1e-2)


def test_adjusted_lr_uses_fan_in_of_the_layout():
    # x @ W with W (in=8, out=32) and nn.Linear weight (out=32, in=8) are the same map.
    assert adjusted_lr(0.02, torch.Size([8, 32]), "in_out", "original") == pytest.approx(0.04)
    assert adjusted_lr(0.02, torch.Size([32, 8]), "out_in", "original") == pytest.approx(0.04)
    assert adjusted_lr(0.02, torch.Size([32, 8]), "in_out", "original") == pytest.approx(0.02)
    assert adjusted_lr(0.02, torch.Size([2, 8, 32]), "in_out", "match_rms_adamw") == pytest.approx(0.02 * 0.2 * 32**0.5)


# -- the optimizer ---------------------------------------------------------------------------
def test_muon_step_matches_torch_muon_on_a_linear_weight():
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon not in this torch")
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(24, 10))  # nn.Linear layout (out, in)
    w2 = nn.Parameter(w1.detach().clone())
    ours = MuonWithAdamW([{"kind": "muon", "params": [w1], "layout": "out_in", "lr": 0.02, "weight_decay": 0.1}])
    ref = torch.optim.Muon([w2], lr=0.02, weight_decay=0.1, momentum=0.95)
    for _ in range(3):
        g = torch.randn(24, 10)
        w1.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(w1, w2, atol=1e-6)


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    ours = MuonWithAdamW([{"kind": "adamw", "params": a, "lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1}])
    ref = torch.optim.AdamW(b, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    for _ in range(4):
        for pa, pb in zip(a, b):
            g = torch.randn_like(pa)
            pa.grad, pb.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for pa, pb in zip(a, b):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_group_split_on_bdh_layout():
    roles = split_params(TinyBDHLike())
    assert names(roles, "muon_in_out") == sorted(
        f"layers.{i}.{n}" for i in range(2) for n in ("encoder", "encoder_v", "decoder"))
    assert names(roles, "muon_out_in") == []
    assert names(roles, "decay") == ["embed.weight", "lm_head"]
    assert names(roles, "no_decay") == sorted(
        f"layers.{i}.{n}" for i in range(2) for n in ("diff_lambda", "forget.bias"))


@pytest.mark.parametrize("per_layer", [True, False])
def test_group_split_on_real_bdh(per_layer):
    from bdh_scale.model import BDH, ModelConfig

    cfg = ModelConfig(n_layer=2, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, per_layer_params=per_layer,
                    forget_mode="scalar", diff_attn=True)
    roles = split_params(BDH(cfg))
    proj = ("encoder", "encoder_v", "decoder")
    expected = [f"layers.{i}.{n}" for i in range(2) for n in proj] if per_layer else list(proj)
    assert names(roles, "muon_in_out") == sorted(expected)
    assert names(roles, "decay") == ["embed.weight", "lm_head"]
    assert roles["muon_out_in"] == []
    assert all(p.ndim < 2 for _, p in roles["no_decay"]) and roles["no_decay"]


def test_one_muon_step_moves_everything_and_orthogonalizes_per_head():
    torch.manual_seed(0)
    model = TinyBDHLike()
    opt = build_optimizer(model, name="muon", lr=1e-3, weight_decay=0.0, muon_lr=0.02)
    assert [g["kind"] for g in opt.param_groups] == ["muon", "adamw", "adamw"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(*batch()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), f"{n} did not move"
    # Each head moved by -lr * NS(its own Nesterov momentum), computed as the optimizer does on
    # step 1 (buffer 0 -> lerp towards grad); AdamW's first step moves every entry by ~lr.
    enc = "layers.0.encoder"
    g = grads[enc]
    nesterov = g.lerp(torch.zeros_like(g).lerp_(g, 1 - 0.95), 0.95)
    delta = model.get_parameter(enc).detach() - before[enc]
    for h in range(delta.size(0)):
        expect = -adjusted_lr(0.02, delta.shape, "in_out", "original") * zeropower_via_newtonschulz(nesterov[h]).float()
        assert torch.allclose(delta[h], expect, atol=1e-6)
    emb_delta = (model.embed.weight.detach() - before["embed.weight"])[grads["embed.weight"].abs().sum(1) > 0]
    assert torch.allclose(emb_delta.abs().max(), torch.tensor(1e-3), rtol=1e-3)


def _train(model, opt, steps, seed0):
    for s in range(steps):
        opt.zero_grad()
        model(*batch(seed0 + s)).backward()
        opt.step()


def test_state_dict_round_trip_gives_identical_next_step():
    torch.manual_seed(0)
    model = TinyBDHLike()
    opt = build_optimizer(model, name="muon", lr=1e-2, weight_decay=0.1)
    _train(model, opt, 3, 0)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 1, 3)

    model2 = TinyBDHLike()
    model2.load_state_dict(saved_model)
    opt2 = build_optimizer(model2, name="muon", lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(saved_opt)
    _train(model2, opt2, 1, 3)
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), n


def test_scheduler_scales_muon_and_adamw_groups():
    opt = build_optimizer(TinyBDHLike(), name="muon", lr=1e-3, weight_decay=0.0, muon_lr=0.02)
    make_scheduler(opt, lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=10)
    lrs = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert lrs["muon"] == pytest.approx(0.02 / 5) and lrs["adamw"] == pytest.approx(1e-3 / 5)


def test_adamw_build_decays_matrices_only():
    model = TinyBDHLike()
    opt = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert not decay["fused"]  # CPU


def test_gpt_linear_weights_are_out_in():
    from bdh_scale.model.gpt.gpt import GPT, GPTConfig

    roles = split_params(GPT(GPTConfig(n_layer=1, n_embd=16, n_head=2, block_size=8)))
    assert names(roles, "muon_out_in") == ["blocks.0.attn.proj.weight", "blocks.0.attn.qkv.weight",
                                           "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"]
    assert names(roles, "decay") == ["embed.weight", "pos_embed.weight"] and roles["muon_in_out"] == []


def test_rejects_bad_groups_and_names():
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="kind"):
        MuonWithAdamW([{"params": [p]}])
    with pytest.raises(ValueError, match="ndim"):
        MuonWithAdamW([{"kind": "muon", "params": [p]}])
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(TinyBDHLike(), name="sgd", lr=1e-3, weight_decay=0.0)


def test_works_through_accelerate():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    try:
        accelerator = accelerate.Accelerator(cpu=True)
        model = TinyBDHLike()
        opt = build_optimizer(model, name="muon", lr=1e-3, weight_decay=0.1)
        sched = make_scheduler(opt, lr=1e-3, min_lr=1e-4, warmup_steps=2, max_steps=10)
        model, opt, sched = accelerator.prepare(model, opt, sched)
        before = model.layers[0].decoder.detach().clone()
        accelerator.backward(model(*batch()))
        opt.step()
        sched.step()
        opt.zero_grad()
        assert not torch.equal(model.layers[0].decoder, before)
        state = opt.state_dict()
        assert {g["kind"] for g in state["param_groups"]} == {"muon", "adamw"}
        opt.load_state_dict(state)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
