"""Dashboard metrics: the FLOP count behind MFU, sparsity and rho norms, and that logging them
cannot change a run."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bdh_scale.model import BDH, ModelConfig, build_model
from bdh_scale.model.flops import flops_per_token
from bdh_scale.train.report.diagnostics import MFU, activation_and_state, carried_rho_norms
from tests.helpers.tiny_runs import train_in_process

SMALL = dict(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=8, dropout=0.0, vocab_size=64)


def counted_forward_flops(model, T):
    idx = torch.randint(0, 64, (1, T))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx)
    return counter.get_total_flops()


def test_bdh_flops_per_token_matches_torch_flop_counter():
    """torch counts every GEMM of a forward, including the masked upper half of the T x T scores;
    our count charges T/2 earlier tokens per token. Adding that half back must give torch's total."""
    cfg = ModelConfig(attn_backend="parallel", **SMALL)
    T = 48
    counted = counted_forward_flops(build_model(cfg).eval(), T)
    ours = flops_per_token(cfg, T, training=False) * T
    masked_half = 2 * cfg.n_layer * cfg.n_head * (cfg.n_neurons + cfg.n_embd) * T * T / 2
    assert counted == pytest.approx(ours + masked_half, rel=1e-9)


def test_gpt_flops_per_token_matches_torch_flop_counter_outside_attention():
    """The GPT's projections, MLP and head against torch's count; its fused SDPA kernel is opaque to
    the counter on CPU, so the attention term (2 ctx D per layer) is checked by formula only."""
    cfg = ModelConfig(arch="gpt", block_size=64, **SMALL)
    T = 48
    counted = counted_forward_flops(build_model(cfg).eval(), T)
    attention = 2 * cfg.n_layer * 2 * (T / 2) * cfg.n_embd * T
    assert counted == pytest.approx(flops_per_token(cfg, T, training=False) * T - attention, rel=1e-9)


def test_training_flops_are_three_forwards_and_hrm_counts_its_cycles():
    cfg = ModelConfig(**SMALL)
    assert flops_per_token(cfg, 64) == 3 * flops_per_token(cfg, 64, training=False)
    hrm = ModelConfig(arch="bdh_hrm", **SMALL)
    one_pass = flops_per_token(ModelConfig(**{**SMALL, "n_layer": 1}), 64, training=False)
    head = 2 * hrm.n_embd * hrm.vocab_size
    layer = one_pass - head
    passes = hrm.hrm_h_cycles * (hrm.hrm_l_cycles * hrm.hrm_l_layers + hrm.hrm_h_layers)
    assert flops_per_token(hrm, 64, training=False) == pytest.approx(passes * layer + head)
    assert flops_per_token(hrm, 64) < 3 * flops_per_token(hrm, 64, training=False)  # one-step gradient


def test_mfu_is_model_flops_over_the_given_peak():
    cfg = ModelConfig(**SMALL)
    mfu = MFU(cfg, torch.device("cpu"), "no", num_processes=2, peak_tflops=0.5)
    row = mfu(T=64, tokens_per_s=1000.0)
    assert row["mfu"] == pytest.approx(flops_per_token(cfg, 64) * 1000.0 / 1e12)
    assert row["model_tflops"] == pytest.approx(flops_per_token(cfg, 64) * 1000.0 / 1e12)


def test_a_peak_measured_on_a_busy_start_up_is_measured_again_before_mfu_reads_above_one(monkeypatch):
    """The start-up GEMMs were slowed 10^5-fold (another job): the first step that would log more
    than 100% re-measures the peak instead, and logs a utilisation below 1."""
    import bdh_scale.train.report.diagnostics as diagnostics

    monkeypatch.setattr(diagnostics, "device_peak_flops", lambda device, dtype: 1e6)  # 1 MFLOP/s: far too low
    cfg = ModelConfig(**SMALL)
    mfu = MFU(cfg, torch.device("cpu"), "no", num_processes=1, peak_tflops=None)
    tokens_per_s = 1e9 / flops_per_token(cfg, 64)  # 1 GFLOP/s of model FLOPs: below any real CPU's peak
    row = mfu(T=64, tokens_per_s=tokens_per_s)
    assert mfu.per_device > 1e9 and 0 < row["mfu"] < 1
    assert row["mfu"] == pytest.approx(1e9 / mfu.per_device)


def test_an_mfu_above_one_is_never_logged(capsys):
    """Against a given peak no measurement can fix, an impossible utilisation is null, said once."""
    cfg = ModelConfig(**SMALL)
    mfu = MFU(cfg, torch.device("cpu"), "no", num_processes=1, peak_tflops=1e-6)  # 1 MFLOP/s
    rows = [mfu(T=64, tokens_per_s=1000.0) for _ in range(3)]
    assert [r["mfu"] for r in rows] == [None] * 3 and rows[0]["model_tflops"] > 1e-6
    err = capsys.readouterr().err
    assert err.count("warning: mfu:") == 1 and "tracking.peak_tflops" in err


def test_a_known_gpu_gets_its_datasheet_dense_peak_in_half_precision():
    from bdh_scale.utils.perf import datasheet_peak_flops

    assert datasheet_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert datasheet_peak_flops("NVIDIA H100 PCIe", torch.float16) == 756e12
    assert datasheet_peak_flops("NVIDIA H200", torch.bfloat16) == 989e12
    assert datasheet_peak_flops("NVIDIA L40S", torch.bfloat16) == 362e12  # not the L4's
    assert datasheet_peak_flops("NVIDIA H100 80GB HBM3", torch.float32) is None  # fp32: measured
    assert datasheet_peak_flops("Some Future GPU", torch.bfloat16) is None


def test_activation_and_state_reads_the_real_codes_and_state():
    torch.manual_seed(0)
    model = BDH(ModelConfig(**SMALL))
    x = torch.randint(0, 64, (3, 20))
    row = activation_and_state(model, x)
    state = model(x, return_state=True).state
    for i, layer in enumerate(state.layers):
        assert row[f"state/rho_norm_l{i}"] == pytest.approx(layer.rho.norm(dim=(-2, -1)).mean().item(), rel=1e-5)
        assert 0 < row[f"act/xy_active_l{i}"] <= min(row[f"act/x_active_l{i}"], row[f"act/y_active_l{i}"]) < 1
    assert carried_rho_norms([state, state])["state/carried_rho_norm_l0"] == pytest.approx(row["state/rho_norm_l0"])
    assert model.training  # restored
    assert activation_and_state(build_model(ModelConfig(arch="gpt", **SMALL)), x) == {}


def test_dashboard_extras_do_not_change_training(tmp_path):
    """Diagnostics and eval samples run outside the graph and with a private RNG: the losses of a
    run with them equal those of a run without, bit for bit, and the validation rows carry them."""
    common = ["train.max_steps=6", "train.eval_every=3", "train.state=carry"]
    on = train_in_process(tmp_path, "with_extras", *common, "tracking.eval_sample_tokens=8")
    off = train_in_process(tmp_path, "without", *common, "tracking.diagnostics=false", "tracking.eval_sample_tokens=0")

    def rows(result):
        return [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]

    on_rows, off_rows = rows(on), rows(off)
    assert [r["loss"] for r in on_rows] == [r["loss"] for r in off_rows]
    val = [r for r in on_rows if "val_loss" in r]
    assert len(val) == 2 and all("act/xy_active" in r and "state/rho_norm_l1" in r and r["sample"] for r in val)
    assert all("state/carried_rho_norm_l0" in r and 0 < r["mfu"] for r in on_rows)
    assert not any("act/xy_active" in r or "sample" in r for r in off_rows)
