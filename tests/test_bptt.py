"""train.bptt_windows: k windows backpropagated through the carried state in one step. The
gradient is that of one forward over the k windows, and a run killed mid-way resumes bit for bit."""
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState

from bdh_scale.config import load_config
from bdh_scale.train.setup import setup
from bdh_scale.train.step import train_step
from tests.helpers.tiny_runs import RECIPE, losses, metrics, overrides, rank_state, train_process, weights

T, K = 16, 3


def step_gradients(tmp_path, *extra) -> tuple[dict, dict, list, object]:
    """The gradients train_step accumulates in the first step, the weights it started from, the
    step's batches (the same lanes built again) and the model config."""
    from bdh_scale.data import build_data

    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = load_config(RECIPE, overrides(tmp_path, "g", "train.state=carry", f"train.seq_len={T}", "train.batch_size=2",
                                        "train.grad_accum_steps=2", "data.prefetch=0", "model.token_shift=layer",
                                        "model.forget_mode=data", "train.keep_checkpoints=0", "train.grad_clip=0", *extra))
    run = setup(cfg)
    try:
        for s in run.raw_model.token_shift:  # a path with weight, so that the shift's state matters too
            torch.nn.init.normal_(s.weight, std=0.2)
        start = {n: p.detach().clone() for n, p in run.raw_model.state_dict().items()}
        run.optimizer.step = run.optimizer.zero_grad = lambda *a, **k: None  # keep the gradients as they are
        train_step(run, T, SimpleNamespace(requested=None), 0.0)
        grads = {n: p.grad.clone() for n, p in run.raw_model.named_parameters() if p.grad is not None}
    finally:
        if run.claim is not None:
            run.claim.release()
        AcceleratorState._reset_state(reset_partial_state=True)
    data = build_data(cfg.data, batch_size=4, seed=cfg.train.seed, seq_len=T)
    return grads, start, [data.train.next_batch(T) for _ in range(cfg.train.bptt_windows)], cfg.model


def oracle(model_cfg, start: dict, batches, detach_between: bool) -> dict:
    """Gradients of one forward over the k windows of each micro-batch (mean loss over all their
    targets, micro-batches averaged), or with the state detached between windows."""
    from bdh_scale.model import build_model

    model = build_model(model_cfg)
    model.load_state_dict(start)
    model.train()
    for micro in range(2):
        rows = slice(2 * micro, 2 * micro + 2)
        x = torch.cat([b.x[rows] for b in batches], dim=1)
        y = torch.cat([b.y[rows] for b in batches], dim=1)
        if not detach_between:
            loss = model(x, y, state=model.init_state(2)).loss
        else:
            state, parts = model.init_state(2), []
            for b in batches:
                out = model(b.x[rows], b.y[rows], state=state)
                parts.append(out.loss)
                state = out.state.detach()
            loss = sum(parts) / len(parts)
        (loss / 2).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_the_gradient_over_k_windows_equals_one_forward_over_them(tmp_path):
    grads, start, batches, model_cfg = step_gradients(tmp_path, f"train.bptt_windows={K}")
    assert len(batches) == K
    full = oracle(model_cfg, start, batches, detach_between=False)
    assert full.keys() == grads.keys()
    for name in full:
        scale = full[name].abs().max().clamp_min(1e-8)
        assert (grads[name] - full[name]).abs().max() <= 1e-4 * scale, name
    # the oracle can tell: truncating between the windows gives another gradient
    cut = oracle(model_cfg, start, batches, detach_between=True)
    assert any(not torch.allclose(cut[n], full[n], rtol=1e-3, atol=1e-6) for n in full)


RESUME = ["train.max_steps=6", "train.checkpoint_every=3", "train.state=carry", "train.batch_size=2",
          "train.grad_accum_steps=2", "train.bptt_windows=2", "data.prefetch=2", "train.resume=auto"]


def test_a_run_with_several_windows_per_step_killed_after_a_checkpoint_resumes_bitwise(tmp_path):
    whole = train_process(1, tmp_path / "a", "r", *RESUME)
    assert whole.returncode == 0, whole.stderr
    killed = train_process(1, tmp_path / "b", "r", *RESUME, env={"BDH_KILL_AT": "after_step:4"})
    assert killed.returncode == -9, killed.stderr
    resumed = train_process(1, tmp_path / "b", "r", *RESUME)
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr
    a, b = tmp_path / "a" / "r", tmp_path / "b" / "r"
    assert losses(b) == losses(a)
    # each step reads 2 windows of every one of the 4 lanes
    assert [r["tokens"] for r in metrics(b) if "loss" in r] == [s * 2 * 4 * 32 for s in range(1, 7)]
    end_a, end_b = rank_state(a / "checkpoints/step_00000006"), rank_state(b / "checkpoints/step_00000006")
    assert end_a["lanes"] == end_b["lanes"] and end_a["lanes"]["batches_served"] == 12
    wa, wb = weights(a / "checkpoints/step_00000006"), weights(b / "checkpoints/step_00000006")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


SHARED = ["train.max_steps=4", "train.state=carry", "train.bptt_windows=2", "train.eval_every=0",
          "train.checkpoint_every=0"]


def test_ddp_and_fsdp_backpropagate_through_the_windows_as_one_process(tmp_path):
    """8 global lanes: one process of B=8, and 2 processes x B=2 x 2 micro-batches under DDP and
    FSDP2 (with gradient checkpointing): the same loss every step."""
    runs = {"one": train_process(1, tmp_path, "one", *SHARED, "train.batch_size=8"),
            "ddp": train_process(2, tmp_path, "ddp", *SHARED, "train.batch_size=2", "train.grad_accum_steps=2",
                                 "train.gradient_checkpointing=true"),
            "fsdp": train_process(2, tmp_path, "fsdp", *SHARED, "train.batch_size=2", "train.grad_accum_steps=2",
                                  "train.gradient_checkpointing=true", config="fsdp.yaml")}
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-2000:])
    ref = losses(tmp_path / "one")
    assert [s for s, _ in ref] == [1, 2, 3, 4]
    for name in ("ddp", "fsdp"):
        got = losses(tmp_path / name)
        assert [s for s, _ in got] == [1, 2, 3, 4]
        assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(got, ref)), (name, got, ref)
