"""Checkpoints: a run killed at any point continues exactly as if it had never stopped, a damaged
checkpoint is never used, and one written for another recipe is refused with what differs."""
import hashlib
import json
import os
import pickle
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from bdh_scale.config import load_config
from bdh_scale.errors import CheckpointError
from bdh_scale.train.checkpoint.checkpointer import check_compatible, list_checkpoints, newest_valid, verify
from bdh_scale.train.schedule import lr_at
from tests.helpers.tiny_runs import (RECIPE, losses, metrics, overrides, rank_state, snapshot, train_in_process,
                                     train_process, weights)

# carry mode, two micro-batches and a prefetch thread: every piece of state a resume must restore
RESUME_RUN = ["train.max_steps=8", "train.checkpoint_every=3", "train.state=carry", "train.batch_size=2",
              "train.grad_accum_steps=2", "data.prefetch=2", "train.resume=auto"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = train_process(1, out, "r", *RESUME_RUN)
    assert proc.returncode == 0, proc.stderr
    return out / "r"


@pytest.mark.parametrize("kill_at", ["after_step:5", "in_checkpoint:6"])
def test_run_killed_after_a_checkpoint_resumes_to_the_same_losses_bitwise(tmp_path, uninterrupted, kill_at):
    killed = train_process(1, tmp_path, "r", *RESUME_RUN, env={"BDH_KILL_AT": kill_at})
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no clean-up ran
    run_dir = tmp_path / "r"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000003"]
    if kill_at.startswith("in_checkpoint"):  # the half-written one is hidden and has no manifest
        (stray,) = (run_dir / "checkpoints").glob(".step_00000006*")
        assert not (stray / "manifest.json").exists()

    resumed = train_process(1, tmp_path, "r", *RESUME_RUN)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step_00000003 at step 3" in resumed.stdout
    assert list((run_dir / "checkpoints").glob(".step_*")) == []  # leftovers of the crash are gone
    # the same per-step losses, bit for bit, each step logged once, tokens continuous
    assert losses(run_dir) == losses(uninterrupted)
    assert [r["tokens"] for r in metrics(run_dir) if "loss" in r] == [s * 4 * 32 for s in range(1, 9)]  # 2 x 2 lanes x T
    # no token served twice or skipped: the lanes end exactly where the uninterrupted run's end
    end, ref = rank_state(run_dir / "checkpoints/step_00000008"), rank_state(uninterrupted / "checkpoints/step_00000008")
    assert end["lanes"] == ref["lanes"] and end["lanes"]["batches_served"] == 8
    for a, b in zip(end["states"], ref["states"]):  # carried states
        for la, lb in zip(a["layers"], b["layers"]):
            assert all(torch.equal(la[k], lb[k]) for k in la)
    wa, wb = weights(run_dir / "checkpoints/step_00000008"), weights(uninterrupted / "checkpoints/step_00000008")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


@pytest.fixture
def two_checkpoints(tmp_path):
    result = train_in_process(tmp_path, "c", "train.max_steps=4", "train.checkpoint_every=2",
                              "train.keep_checkpoints=3", "train.batch_size=4", "data.prefetch=0")
    ckpts = list_checkpoints(result.run_dir)
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000004"]
    for p in ckpts:
        verify(p)
    return result.run_dir, ckpts


def test_damaged_checkpoints_are_refused_and_auto_falls_back_to_the_previous(two_checkpoints, tmp_path, capsys):
    run_dir, (older, newest) = two_checkpoints
    model = newest / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])  # truncated, as by a full disk or a cut copy
    with pytest.raises(CheckpointError, match="model.safetensors has .* bytes.*truncated"):
        verify(newest)
    with pytest.raises(CheckpointError, match="truncated"):  # named explicitly: refused, no fallback
        train_in_process(tmp_path, "c", "train.max_steps=6", "train.batch_size=4", f"train.resume={newest}")

    found, skipped = newest_valid(run_dir)
    assert found == older and len(skipped) == 1 and "step_00000004 is damaged" in skipped[0]
    capsys.readouterr()
    result = train_in_process(tmp_path, "c", "train.max_steps=6", "train.checkpoint_every=2",
                              "train.keep_checkpoints=3", "train.batch_size=4", "data.prefetch=0", "train.resume=auto")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and "step_00000004 is damaged" in said[0] and "resuming from the older step_00000002" in said[0]
    assert result.run_dir == run_dir  # the same run goes on in its own directory, no "-1"
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [1, 2, 3, 4, 5, 6]  # rows after 2 redone once
    verify(run_dir / "checkpoints/step_00000004")  # rewritten whole by the resumed run

    flipped = older / "optimizer.pt"  # same size, one byte changed: only the checksum notices
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optimizer.pt does not match its sha256"):
        verify(older)
    (older / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete: no manifest.json"):
        verify(older)


def test_checkpoint_of_another_recipe_is_refused_saying_what_differs(two_checkpoints, tmp_path):
    _, (_, newest) = two_checkpoints
    for extra, words in [(["model.n_layer=3"], "model.n_layer: checkpoint 2, this run 3"),
                         (["train.batch_size=2"], "train.batch_size: checkpoint 4, this run 2"),
                         (["train.optim=muon"], "train.optim")]:
        with pytest.raises(CheckpointError, match=words.replace("(", r"\(")):
            train_in_process(tmp_path, "other", "train.max_steps=6", "train.batch_size=4", *extra,
                             f"train.resume={newest}")
        assert not (tmp_path / "other" / "checkpoints").exists()  # nothing trained or saved

    cfg = load_config(RECIPE, overrides(tmp_path, "c", "train.batch_size=4"))
    meta = json.loads((newest / "trainer_state.json").read_text())
    other_tokenizer = SimpleNamespace(name="bpe", vocab_size=4096, same_as=lambda other: False)
    with pytest.raises(CheckpointError, match=r"tokenizer: checkpoint bytes \(vocab 256\), this run bpe \(vocab 4096\)"):
        check_compatible(newest, meta, cfg, 1, other_tokenizer, has_scaler=False)
    with pytest.raises(CheckpointError, match="number of processes: checkpoint 1, this run 2"):
        check_compatible(newest, meta, cfg, 2, SimpleNamespace(same_as=lambda other: True), has_scaler=False)


def test_resume_auto_without_checkpoints_starts_fresh_and_finished_runs_are_not_touched(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip, nothing to warn about
        first = train_in_process(tmp_path, "a", "train.max_steps=2", "train.keep_checkpoints=0",
                                 "train.batch_size=4", "data.prefetch=0", "train.resume=auto")
    assert first.run_dir == tmp_path / "a" and not (first.run_dir / "checkpoints").exists()
    second = train_in_process(tmp_path, "a", "train.max_steps=2", "train.batch_size=4", "data.prefetch=0",
                              "train.resume=auto")
    assert second.run_dir == tmp_path / "a-1"  # a finished run without checkpoints is left alone
    third = train_in_process(tmp_path, "a-1", "train.max_steps=3", "train.batch_size=4", "data.prefetch=0",
                             "train.resume=auto")  # extend the finished run by one step
    assert third.run_dir == second.run_dir and third.steps == 3
    assert [r["step"] for r in metrics(third.run_dir) if "loss" in r] == [1, 2, 3]
    capsys.readouterr()
    fourth = train_in_process(tmp_path, "a-1", "train.max_steps=2", "train.batch_size=4", "data.prefetch=0",
                              "train.resume=auto")  # a lower max_steps than the checkpoint's step: says so
    assert fourth.run_dir == second.run_dir and "nothing to train: resumed at step 3" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "a")


def test_resume_applies_the_recipes_current_settings_from_the_resumed_step(tmp_path, monkeypatch):
    """lr, min_lr, warmup, max_steps, weight decay, clipping, eval and log cadence all change on
    resume; the optimizer's moments and step counts come from the checkpoint."""
    common = ["train.batch_size=4", "data.prefetch=0", "train.checkpoint_every=4"]
    old = dict(lr=4e-3, min_lr=4e-4, warmup_steps=2, max_steps=4)
    train_in_process(tmp_path, "s", *common, *(f"train.{k}={v}" for k, v in old.items()), "train.weight_decay=0.1",
                     "train.grad_clip=1.0", "train.log_every=1", "train.eval_every=0")
    new = dict(lr=1e-3, min_lr=1e-5, warmup_steps=6, max_steps=10)
    clip_norms = []
    clip = Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_",
                        lambda self, params, max_norm, **kw: clip_norms.append(max_norm) or clip(self, params, max_norm, **kw))
    result = train_in_process(tmp_path, "s", *common, *(f"train.{k}={v}" for k, v in new.items()),
                              "train.weight_decay=0.0", "train.grad_clip=0.5", "train.log_every=2", "train.eval_every=3",
                              "train.resume=auto")
    assert result.run_dir == tmp_path / "s" and result.steps == 10
    rows = metrics(result.run_dir)
    logged = {r["step"]: r["lr"] for r in rows if "loss" in r}
    assert sorted(logged) == [1, 2, 3, 4, 6, 8, 10]  # log_every 1, then 2
    for step, lr in logged.items():  # the lr each step trained with: the old schedule, then the new one
        assert lr == pytest.approx(lr_at(step - 1, **(old if step <= 4 else new)))
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 6, 9, 10]  # at the end of the first run, then every 3
    assert clip_norms == [0.5] * 6
    opt = torch.load(result.run_dir / "checkpoints/step_00000010/optimizer.pt", weights_only=True)
    assert {g["weight_decay"] for g in opt["param_groups"]} == {0.0}  # the first run decayed at 0.1
    assert {float(s["step"]) for s in opt["state"].values()} == {10.0}  # moments carried on, not restarted


class Payload:
    """Unpickling this runs a shell command: what a planted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "rank_00000.pt", "optimizer.pt"])
def test_a_planted_pickle_in_a_checkpoint_is_never_executed(two_checkpoints, tmp_path, planted):
    _, (_, newest) = two_checkpoints
    marker = tmp_path / "pwned"
    if planted.endswith(".pkl"):
        (newest / planted).write_bytes(pickle.dumps(Payload(marker)))  # as Accelerate's pickles were
    else:
        torch.save({"state": Payload(marker)}, newest / planted)  # replaces a file the checkpoint does hold
    manifest = json.loads((newest / "manifest.json").read_text())  # hashes updated: the manifest is no defence
    manifest["files"][planted] = {"size": (newest / planted).stat().st_size,
                                  "sha256": hashlib.sha256((newest / planted).read_bytes()).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refusing"):
        train_in_process(tmp_path, "c", "train.max_steps=6", "train.batch_size=4", "data.prefetch=0",
                         f"train.resume={newest}")
    assert not marker.exists()


def test_a_refused_resume_writes_nothing(two_checkpoints, tmp_path):
    run_dir, _ = two_checkpoints
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="model.n_layer: checkpoint 2, this run 4"):
        train_in_process(tmp_path, "c", "train.max_steps=6", "train.batch_size=4", "data.prefetch=0",
                         "model.n_layer=4", "train.resume=auto")
    assert snapshot(run_dir) == before  # config.yaml, metrics.jsonl, checkpoints: byte for byte


def test_every_checkpoint_damaged_starts_a_fresh_directory_and_leaves_the_old_one(two_checkpoints, tmp_path, capsys):
    run_dir, ckpts = two_checkpoints
    shutil.rmtree(run_dir / "final")  # a run that was killed after its checkpoints
    for ckpt in ckpts:
        model = ckpt / "model.safetensors"
        model.write_bytes(model.read_bytes()[:-10])
    before = snapshot(run_dir)
    rest = ["train.max_steps=3", "train.batch_size=4", "data.prefetch=0", "train.keep_checkpoints=0"]
    with pytest.raises(CheckpointError, match="auto_or_fail: every checkpoint in .* is damaged"):
        train_in_process(tmp_path, "c", *rest, "train.resume=auto_or_fail")
    assert snapshot(run_dir) == before and not (tmp_path / "c-1").exists()
    capsys.readouterr()
    result = train_in_process(tmp_path, "c", *rest, "train.resume=auto")
    said = [line for line in capsys.readouterr().out.splitlines() if "every checkpoint" in line]
    assert len(said) == 1 and f"fresh run in {tmp_path / 'c-1'}" in said[0]
    assert result.run_dir == tmp_path / "c-1" and [r["step"] for r in metrics(result.run_dir)] == [1, 2, 3]
    assert snapshot(run_dir) == before


def test_every_file_of_a_run_gets_the_same_permissions(two_checkpoints):
    run_dir, _ = two_checkpoints
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(run_dir): oct(p.stat().st_mode & 0o777) for p in run_dir.rglob("*")
             if p.is_file() and p.name != ".lock"}
    assert "final/model.safetensors" in {str(p) for p in modes}  # safetensors files included
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
