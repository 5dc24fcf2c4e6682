"""BDH-HRM hybrid: shapes, HRM's one-step gradient, ACT halting, and training through the loop."""
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from bdh_scale.model import build_model, load_pretrained
from bdh_scale.model.bdh.bdh import layer_norm
from bdh_scale.model.hrm.hrm import BDHHRM

ROOT = Path(__file__).resolve().parents[1]


def hrm(tiny_config, **kw):
    base = dict(arch="bdh_hrm", attn_backend="parallel", hrm_h_layers=1, hrm_l_layers=1,
                hrm_h_cycles=2, hrm_l_cycles=2)
    base.update(kw)
    torch.manual_seed(0)
    return build_model(tiny_config(**base))


def batch(B=2, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T), generator=g), torch.randint(0, 256, (B, T), generator=g)


@pytest.mark.parametrize("act", [False, True])
def test_a_document_boundary_equals_running_the_documents_separately(tiny_config, act):
    model = hrm(tiny_config, hrm_act=act).eval()
    idx, _ = batch(T=13)
    doc_start = torch.zeros(2, 13, dtype=torch.bool)
    doc_start[0, 4] = doc_start[1, 10] = True
    out = model(idx, doc_start=doc_start).logits
    for lane, cuts in ((0, [0, 4, 13]), (1, [0, 10, 13])):
        for lo, hi in zip(cuts, cuts[1:]):
            piece = model(idx[lane:lane + 1, lo:hi]).logits[0]
            if not act:  # with ACT a window halts when all its tokens have: halves may run more segments
                assert torch.allclose(out[lane, lo:hi], piece, atol=1e-5)
    if act:
        model.config.hrm_act_max_segments = 1  # one segment each: no halting decision couples the halves
        out = model(idx, doc_start=doc_start).logits
        for lane, cuts in ((0, [0, 4, 13]), (1, [0, 10, 13])):
            for lo, hi in zip(cuts, cuts[1:]):
                assert torch.allclose(out[lane, lo:hi], model(idx[lane:lane + 1, lo:hi]).logits[0], atol=1e-5)


@pytest.mark.parametrize("act", [False, True])
def test_forward_backward_shapes_and_every_parameter_learns(tiny_config, act):
    model = hrm(tiny_config, hrm_act=act)
    assert isinstance(model, BDHHRM)
    idx, tgt = batch()
    out = model(idx, tgt)
    assert out.logits.shape == (2, 12, 256) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert (out.aux_loss is not None) == act
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_step_gradient_records_only_the_last_L_and_H_step(tiny_config):
    model = hrm(tiny_config, hrm_h_cycles=3, hrm_l_cycles=2)
    calls = {"L": [], "H": []}
    for stack in ("L", "H"):
        for layer in getattr(model, stack).layers:
            layer.register_forward_hook(lambda m, a, out, s=stack: calls[s].append(out[0].requires_grad))
    model(*batch())
    assert calls["L"] == [False] * 5 + [True]  # 3 H cycles x 2 L cycles, only the last one in the graph
    assert calls["H"] == [False, False, True]


def test_one_step_gradient_equals_backprop_through_a_detached_history(tiny_config):
    """The gradient is that of the last L and H step taken from the (constant) earlier states."""
    model = hrm(tiny_config, hrm_h_cycles=2, hrm_l_cycles=3)
    idx, tgt = batch()
    model(idx, tgt).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    cos, sin = model.rope.get(0, idx.size(1), torch.device("cpu"), torch.float32)
    plan = model.plan(idx.size(1), False, False)
    x = layer_norm(model.embed(idx))
    z_L = z_H = x
    for h in range(2):
        for l in range(3):
            if (h, l) != (1, 2):
                z_L = model.L(layer_norm(z_L + z_H + x), cos, sin, plan).detach()
        if h != 1:
            z_H = model.H(layer_norm(z_H + z_L), cos, sin, plan).detach()
    z_L = model.L(layer_norm(z_L + z_H + x), cos, sin, plan)
    z_H = model.H(layer_norm(z_H + z_L), cos, sin, plan)
    torch.nn.functional.cross_entropy((z_H @ model.lm_head).view(-1, 256), tgt.view(-1)).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)

    full = hrm(tiny_config, hrm_h_cycles=2, hrm_l_cycles=3, hrm_one_step_grad=False)
    full(idx, tgt).loss.backward()
    assert not torch.allclose(full.L.layers[0].encoder.grad, got["L.layers.0.encoder"])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    idx, tgt = batch()
    grads = []
    for ckpt in (False, True):
        model = hrm(tiny_config, hrm_act=True, hrm_act_max_segments=2)
        model.gradient_checkpointing = ckpt
        model(idx, tgt).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


def graph_nodes(loss) -> int:
    seen, todo = set(), [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_graph_size_does_not_grow_with_cycles_under_the_one_step_gradient(tiny_config):
    idx, tgt = batch()
    small = graph_nodes(hrm(tiny_config, hrm_h_cycles=2, hrm_l_cycles=2)(idx, tgt).loss)
    big = graph_nodes(hrm(tiny_config, hrm_h_cycles=3, hrm_l_cycles=4)(idx, tgt).loss)
    full = graph_nodes(hrm(tiny_config, hrm_h_cycles=3, hrm_l_cycles=4, hrm_one_step_grad=False)(idx, tgt).loss)
    assert small == big < full


def test_act_halts_after_one_segment_on_easy_input_and_later_on_varied_input(tiny_config):
    """Zero decoders make every layer LN(x), so z_H = LN(embed(token)) in every segment; a halting
    head aligned with token 'a' then halts on 'aaaa...' at once and keeps the other tokens going."""
    model = hrm(tiny_config, hrm_act=True, hrm_act_max_segments=4).eval()
    with torch.no_grad():
        for stack in (model.L, model.H):
            for layer in stack.layers:
                layer.decoder.zero_()
        easy = layer_norm(model.embed.weight[ord("a")])
        model.halt_w.copy_(easy * 10 / easy.norm() ** 2)  # logit 10 - 5 on 'a', about -5 elsewhere
        model.halt_b.fill_(-5.0)
    constant = torch.full((1, 16), ord("a"))
    varied = torch.tensor([list(b"a quick brown fox")[:16]])
    assert model.halting_steps(constant).tolist() == [[1] * 16]
    steps = model.halting_steps(varied)
    assert steps.float().mean() > 2 and (steps[varied == ord("a")] == 1).all()


def test_ponder_cost_teaches_the_halting_head_to_stop_early(tiny_config):
    model = hrm(tiny_config, hrm_act=True, hrm_act_max_segments=3, hrm_act_ponder_cost=1.0)
    idx, tgt = batch(B=1, T=8)
    assert model.halting_steps(idx).float().mean() == 3  # lambda ~ 0.12 at init: all segments
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(12):
        out = model(idx, tgt)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert model.halting_steps(idx).float().mean() < 1.5


def test_act_loss_folds_in_the_ponder_cost_and_eval_loss_is_plain_cross_entropy(tiny_config):
    model = hrm(tiny_config, hrm_act=True, hrm_act_ponder_cost=0.5)
    idx, tgt = batch()
    out = model(idx, tgt)
    assert out.aux_loss >= 0.5 and out.loss > out.aux_loss  # at least one segment is paid for
    model.eval()
    out = model(idx, tgt)
    ce = torch.nn.functional.cross_entropy(out.logits.view(-1, 256), tgt.view(-1))
    assert out.aux_loss is None and torch.allclose(out.loss, ce)


def test_state_is_refused_with_a_clear_message(tiny_config):
    model = hrm(tiny_config)
    idx, _ = batch()
    for call in (lambda: model(idx, state=object()), lambda: model(idx, return_state=True),
                 lambda: model.init_state(2), lambda: model.generate(idx, 2, state=object())):
        with pytest.raises(ValueError, match="train.state"):
            call()


def test_save_pretrained_round_trip_and_generate(tiny_config, tmp_path):
    model = hrm(tiny_config, hrm_act=True).eval()
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m/config.json").read_text())["arch"] == "bdh_hrm"
    again = load_pretrained(tmp_path / "m").eval()
    assert isinstance(again, BDHHRM)
    idx, _ = batch(B=1, T=5)
    torch.testing.assert_close(again(idx).logits, model(idx).logits)
    out = model.generate(idx, 6, temperature=0)
    assert out.shape == (1, 11) and torch.equal(out, again.generate(idx, 6, temperature=0))
    assert torch.equal(out[:, :5], idx)


@pytest.fixture
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("act", [False, True])
def test_loss_falls_training_bdh_hrm_through_the_loop(tmp_path, fresh_accelerate_state, act):
    from bdh_scale.config import load_config
    from bdh_scale.train.loop import train

    overrides = ["model.arch=bdh_hrm", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=8",
                 "model.dropout=0.0", "model.attn_backend=parallel", "model.hrm_h_layers=1", "model.hrm_l_layers=1",
                 "model.hrm_h_cycles=2", "model.hrm_l_cycles=2", "train.batch_size=4", "train.seq_len=32",
                 "train.eval_batches=2", "train.sample_tokens=8", "train.progress=false", "train.warmup_steps=5",
                 "train.lr=0.005", "train.max_steps=30", "train.eval_every=0", "train.log_every=5",
                 "data.prefetch=0", f"train.out_dir={tmp_path}", "train.run_name=hrm", f"model.hrm_act={act}",
                 "model.hrm_act_max_segments=2"]
    result = train(load_config(ROOT / "recipes/shakespeare_cpu.yaml", overrides))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, rows
    assert isinstance(load_pretrained(result.run_dir / "final"), BDHHRM)
    assert len(result.sample) > 0
