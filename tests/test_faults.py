"""Faults: a non-finite step is skipped and counted, too many in a row stop the run with the last good
checkpoint intact, the fp16 loss scaler's overflows are its own business, and SIGTERM / SIGINT save a
checkpoint before the process exits."""
import json
import signal
import time

import pytest
import torch
from accelerate import Accelerator

from bdh_scale.errors import TrainingStopped
from bdh_scale.model import BDH, ModelConfig
from bdh_scale.train import setup
from bdh_scale.train.checkpoint.checkpointer import list_checkpoints, verify
from bdh_scale.train.faults import inject
from bdh_scale.train.faults.guard import BadStepGuard, reset_nonfinite_lanes
from bdh_scale.train.faults.inject import FaultInjection
from tests.helpers.tiny_runs import metrics, rank_state, start_process, train_in_process, weights

SHORT = ["train.batch_size=4", "data.prefetch=0", "train.state=carry"]


def test_a_single_nan_step_is_skipped_counted_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BDH_INJECT_NAN_AT_STEP", "3")
    result = train_in_process(tmp_path, "n", *SHORT, "train.max_steps=5", "train.checkpoint_every=1",
                              "train.keep_checkpoints=5")
    rows = {r["step"]: r for r in metrics(result.run_dir)}  # strict JSON: no bare NaN in the file
    assert [rows[s]["bad_steps"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert rows[3]["loss"] is None  # the step's loss was NaN: written as null
    assert rows[5]["loss"] == rows[5]["loss"] and result.final_val["val_loss"] < 6  # finite, trained on
    assert [p.name for p in list_checkpoints(result.run_dir)] == [f"step_0000000{i}" for i in (1, 2, 4, 5)]
    step4 = result.run_dir / "checkpoints/step_00000004"  # none at the bad step 3 itself
    opt = torch.load(step4 / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in opt["state"].values()} == {3.0}  # steps 1, 2, 4: step 3 made none
    assert all(torch.isfinite(w).all() for w in weights(step4).values())  # its NaN gradients were dropped
    assert rank_state(step4)["lanes"]["batches_served"] == 4  # its data window was consumed, not replayed


def test_consecutive_nan_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("BDH_INJECT_NAN_AT_STEP", "4,5,6")
    with pytest.raises(TrainingStopped, match=r"max_bad_steps=3: steps 4-6 .*last good one.*train.resume=auto"):
        train_in_process(tmp_path, "k", *SHORT, "train.max_steps=10", "train.checkpoint_every=2",
                         "train.max_bad_steps=3")
    # step 4 fell in the streak: no checkpoint was written during it, step 2 is intact
    assert [p.name for p in list_checkpoints(tmp_path / "k")] == ["step_00000002"]
    verify(tmp_path / "k/checkpoints/step_00000002")
    assert not (tmp_path / "k/final").exists()


def test_fp16_scaler_overflow_is_counted_not_bad_and_a_nan_loss_is_bad(tmp_path, monkeypatch):
    """fp16 needs a GPU here, so the loop runs in fp32 with a real GradScaler put into Accelerate: the
    same calls (scaled backward, unscale in clipping, scaler.step / update, optimizer_step_was_skipped)."""

    class ScaledAccelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # 2**127: the scaled loss overflows fp32 until the scaler has halved its scale a few times
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)

    monkeypatch.setattr(setup, "Accelerator", ScaledAccelerator)
    result = train_in_process(tmp_path, "s", *SHORT, "train.max_steps=6", "train.checkpoint_every=3")
    rows = metrics(result.run_dir)
    assert rows[-1]["scaler_overflows"] >= 1 and rows[-1]["bad_steps"] == 0
    assert rows[-1]["loss_scale"] < 2.0 ** 127 and rows[-1]["loss"] == rows[-1]["loss"]
    saved = json.loads((result.run_dir / "checkpoints/step_00000006/scaler.json").read_text())  # JSON, no pickle
    assert saved["scale"] == rows[-1]["loss_scale"]

    monkeypatch.setenv("BDH_INJECT_NAN_AT_STEP", "8,9")  # a NaN loss is bad whatever the scale
    with pytest.raises(TrainingStopped, match="steps 8-9"):
        train_in_process(tmp_path, "s", *SHORT, "train.max_steps=12", "train.max_bad_steps=2", "train.resume=auto")


def test_the_stop_message_names_the_last_good_checkpoint_or_says_there_is_none():
    with pytest.raises(TrainingStopped, match="no checkpoint was written before them"):
        BadStepGuard(max_bad_steps=1).record(1, True, True)
    with pytest.raises(TrainingStopped, match="the newest checkpoint, runs/r/checkpoints/step_00000004, is the last good"):
        BadStepGuard(max_bad_steps=1, last_checkpoint=lambda: "runs/r/checkpoints/step_00000004").record(5, True, True)


def test_guard_rules_without_and_with_a_scaler():
    guard = BadStepGuard(max_bad_steps=2)
    assert guard.may_step(False, False) and not guard.may_step(True, False) and not guard.may_step(False, True)
    assert guard.record(1, False, True) and not guard.record(2, False, False)  # a good step ends the streak
    assert guard.record(3, True, True)
    with pytest.raises(TrainingStopped, match="steps 3-4"):
        guard.record(4, False, True)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    scaled = BadStepGuard(max_bad_steps=2, scaler=scaler)
    assert scaled.may_step(True, True)  # the scaler must see the overflow to skip and rescale
    assert not scaled.record(1, False, True, scaler_skipped=True) and scaled.overflows == 1
    scaler.scale(torch.tensor(1.0))  # (the scaler starts keeping its scale at its first use)
    scaler.update(0.5)  # the scale fell below 1: gradients overflow unscaled, nothing will fix that
    assert scaled.record(2, False, True, scaler_skipped=True) and scaled.consecutive == 1


def test_nonfinite_carried_lanes_are_reset_and_the_others_kept():
    model = BDH(ModelConfig(n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0,
                          attn_backend="chunked"))
    state = model(torch.randint(0, 256, (3, 8)), return_state=True).state.detach()
    before = [dict(layer.state_dict()) for layer in state.layers]
    state.layers[0].rho[1, 0, 0, 0] = float("nan")
    reset_nonfinite_lanes(state)
    rho = state.layers[0].rho
    assert torch.isfinite(rho).all() and (rho[1] == 0).all()
    assert torch.equal(rho[0], before[0]["rho"][0]) and torch.equal(rho[2], before[0]["rho"][2])


def test_fault_injection_is_inert_unless_asked():
    loss = torch.tensor(1.0)
    inject.arm({})
    assert inject._armed is None and inject.at("loss", 3, loss) is loss and inject.at("after_step", 3) is None
    none = FaultInjection.from_env({})
    assert none.poison(loss, 3) is loss and none.kill_at is None and not none.any()
    some = FaultInjection.from_env({"BDH_INJECT_NAN_AT_STEP": "2, 5", "BDH_KILL_AT": "in_checkpoint:4"})
    assert some.nan_steps == {2, 5} and some.kill_at == ("in_checkpoint", 4)
    with pytest.raises(ValueError, match="after_step:N or in_checkpoint:N"):
        FaultInjection.from_env({"BDH_KILL_AT": "soon"})
    inject.arm({"BDH_INJECT_NAN_AT_STEP": "2"})
    try:
        assert torch.isnan(inject.at("loss", 2, loss)) and inject.at("loss", 3, loss) is loss
    finally:
        inject.arm({})


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_at_the_end_of_the_step_and_exits(tmp_path, sig, code):
    proc = start_process(tmp_path, "p", *SHORT, "train.max_steps=100000", "train.checkpoint_every=0")
    try:
        deadline = time.monotonic() + 120
        while len(metrics(tmp_path / "p")) < 2:  # training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert f"{sig.name} received" in err and f"stopped by {sig.name}" in out
    (ckpt,) = list_checkpoints(tmp_path / "p")
    verify(ckpt)
    last = metrics(tmp_path / "p")[-1]["step"]
    assert ckpt.name == f"step_{last:08d}"  # saved at the end of the step the signal fell in
    assert not (tmp_path / "p/final").exists()  # stopped, not finished
