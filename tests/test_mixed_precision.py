"""Mixed precision without a GPU: bf16 autocast on the CPU through the attention kernels (custom
autograd Functions included) and a whole BDH, against fp32, forward and backward; and the fp16
loss-scaler path, where an injected overflow skips exactly its steps and nothing else moves."""
import json

import pytest
import torch
from accelerate import Accelerator

from bdh_scale.model import BDH, ModelConfig
from bdh_scale.model.bdh.attention import attend_chunked, attend_parallel, causal_self_attention
from bdh_scale.model.bdh.plain import PlainBDH
from bdh_scale.train import setup
from bdh_scale.train.schedule import lr_at
from tests.helpers.tiny_runs import metrics, rank_state, train_in_process, weights

B, H, T, N, D = 2, 2, 40, 24, 8
SCALE = N**-0.5
BF16_REL = 2e-2  # relative to the largest entry: bf16 keeps 8 bits of mantissa (eps 2^-8 = 0.4%)


def rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def run_kernel(kernel, k, v, bf16: bool):
    """Output and input gradients of one kernel call, under bf16 autocast or in fp32."""
    k, v = k.clone().requires_grad_(), v.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        a = kernel(k, v)
    (a.float() * torch.linspace(-1, 1, a.size(-1))).sum().backward()  # outside autocast, as a trainer does
    return a.detach(), k.grad, v.grad


KERNELS = {
    "causal_self": lambda k, v: causal_self_attention(k, v, SCALE),  # custom Function: the parallel hot path
    "parallel_window": lambda k, v: attend_parallel(k, k, v, SCALE, None, 8),
    # custom Function with autocast off inside: fed half-precision inputs, as the model's
    # bf16 projections give it, it accumulates in fp32
    "chunked": lambda k, v: attend_chunked(k.bfloat16() if torch.is_autocast_enabled("cpu") else k,
                                           k.bfloat16() if torch.is_autocast_enabled("cpu") else k,
                                           v.bfloat16() if torch.is_autocast_enabled("cpu") else v,
                                           SCALE, None, None, None, 16)[0],
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_attention_kernels_under_bf16_autocast_match_fp32_forward_and_backward(name):
    g = torch.Generator().manual_seed(0)
    k, v = torch.relu(torch.randn(B, H, T, N, generator=g)), torch.randn(B, 1, T, D, generator=g)
    half, full = run_kernel(KERNELS[name], k, v, bf16=True), run_kernel(KERNELS[name], k, v, bf16=False)
    for what, a, b in zip(("output", "dk", "dv"), half, full):
        assert a is not None and torch.isfinite(a).all()
        assert rel(a, b) < BF16_REL, (name, what, rel(a, b))


@pytest.mark.parametrize("backend", ["parallel", "chunked"])
def test_bdh_under_bf16_autocast_is_as_close_to_fp32_as_the_plain_formulation(backend):
    """A whole forward and backward in bf16 on the CPU: the model's kernels lose no more to bf16
    than autocast makes the plain formulation (model/bdh/plain.py, the same weights) lose."""
    torch.manual_seed(0)
    model = BDH(ModelConfig(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0,
                          attn_backend=backend, vocab_size=64))
    idx, targets = torch.randint(0, 64, (2, 24)), torch.randint(0, 64, (2, 24))

    def loss_and_grads(net, bf16):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(idx, targets)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    errors = {}
    for name, net in (("bdh", model), ("plain", PlainBDH(model))):
        (l16, g16), (l32, g32) = loss_and_grads(net, True), loss_and_grads(net, False)
        g16, g32 = torch.cat([g.flatten() for g in g16]), torch.cat([g.flatten() for g in g32])
        errors[name] = (abs(float(l16 - l32)) / float(l32), float((g16 - g32).norm() / g32.norm()))
    (loss_ours, grad_ours), (loss_plain, grad_plain) = errors["bdh"], errors["plain"]
    assert loss_ours < 1e-3 and grad_ours < 0.1, errors  # bf16-sized, not broken
    assert loss_ours <= 2 * loss_plain + 1e-4 and grad_ours <= 1.5 * grad_plain, errors


def test_fp16_loss_scaler_skips_exactly_the_overflowing_steps_and_keeps_schedule_state_and_lanes(tmp_path, monkeypatch):
    """fp16 needs a GPU, so the loop runs in fp32 with a real GradScaler put into Accelerate (the same
    calls: scaled backward, unscale in clipping, scaler.step / update, optimizer_step_was_skipped)."""

    class ScaledAccelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)

    monkeypatch.setattr(setup, "Accelerator", ScaledAccelerator)
    monkeypatch.setenv("BDH_INJECT_OVERFLOW_AT_STEP", "3,5")
    schedule = dict(lr=0.005, min_lr=0.0005, warmup_steps=2, max_steps=6)
    result = train_in_process(tmp_path, "s", "train.batch_size=4", "data.prefetch=0", "train.state=carry",
                              *(f"train.{k}={v}" for k, v in schedule.items()),
                              "train.checkpoint_every=1", "train.keep_checkpoints=6")
    rows = {r["step"]: r for r in metrics(result.run_dir) if "loss" in r}
    assert [rows[s]["scaler_overflows"] for s in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert [rows[s]["bad_steps"] for s in range(1, 7)] == [0] * 6  # overflows are the scaler's business
    assert [rows[s]["loss_scale"] for s in range(1, 7)] == [2.0**16] * 2 + [2.0**15] * 2 + [2.0**14] * 2
    for s in range(1, 7):  # the schedule went on through the skipped steps
        assert rows[s]["lr"] == pytest.approx(lr_at(s - 1, **schedule)) and rows[s]["loss"] is not None
    ckpt = {s: result.run_dir / f"checkpoints/step_{s:08d}" for s in range(1, 7)}
    for skipped in (3, 5):  # no update: weights and moments exactly as before the step
        before, after = weights(ckpt[skipped - 1]), weights(ckpt[skipped])
        assert all(torch.equal(before[k], after[k]) for k in before)
        opt_before = torch.load(ckpt[skipped - 1] / "optimizer.pt", weights_only=True)["state"]
        opt_after = torch.load(ckpt[skipped] / "optimizer.pt", weights_only=True)["state"]
        assert all(torch.equal(opt_before[i][m], opt_after[i][m]) for i in opt_before for m in opt_before[i])
    for taken in (2, 4, 6):  # the steps around them do update
        assert not torch.equal(weights(ckpt[taken - 1])["lm_head"], weights(ckpt[taken])["lm_head"])
    steps_taken = {float(st["step"]) for st in torch.load(ckpt[6] / "optimizer.pt", weights_only=True)["state"].values()}
    assert steps_taken == {4.0}  # 6 steps, 2 skipped
    assert json.loads((ckpt[6] / "scaler.json").read_text())["scale"] == 2.0**14
    for s in range(1, 7):  # the data went on: every step consumed its windows; the carried state moved on
        assert rank_state(ckpt[s])["lanes"]["batches_served"] == s
    rho = [rank_state(ckpt[s])["states"][0]["layers"][0]["rho"] for s in (2, 3)]
    assert torch.isfinite(rho[1]).all() and not torch.equal(rho[0], rho[1])
