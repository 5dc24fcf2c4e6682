"""A checkpoint that cannot be written is one line that says what happened to the disk and names the
newest intact checkpoint, with nothing of the failed one left; a checkpoint reaches the disk before
its manifest makes it count; pruning never deletes outside the run directory; and a checkpoint
whose files cannot be read is passed over for an older one."""
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from bdh_scale.train.checkpoint import checkpointer as checkpoint, files as checkpoint_files
from bdh_scale.train.checkpoint.checkpointer import MANIFEST, _sha256, list_checkpoints, verify
from bdh_scale.utils import atomic
from tests.helpers.tiny_runs import RECIPE, TINY, main_in_process

SIX = ["train.max_steps=6", "train.checkpoint_every=2", "train.sample_tokens=0", "train.eval_batches=0"]


def train(capsys, out_dir, *extra) -> tuple[int, list[str]]:
    """(exit code, the stderr lines); the stdout lines are kept in train.said."""
    capsys.readouterr()
    code = main_in_process(RECIPE, *TINY, *SIX, f"train.out_dir={out_dir}", "train.run_name=d", *extra)
    out = capsys.readouterr()
    train.said = out.out.splitlines()
    return code, [line for line in out.err.splitlines() if line.strip()]


def assert_failed_at_step_4(code, err, run_dir: Path, words: str) -> None:
    assert code == 1 and len(err) == 1 and err[0].startswith("error:"), err
    line = err[0]
    assert "the checkpoint of step 4 could not be written" in line and words in line, line
    assert "its partial files were removed" in line and "train.resume=auto" in line
    assert f"the newest intact checkpoint is {run_dir / 'checkpoints/step_00000002'} (step 2)" in line
    (ckpt,) = list_checkpoints(run_dir)
    verify(ckpt)
    assert not list((run_dir / "checkpoints").glob(".step_*"))


def failing_once_at(target: str):
    """A failure of the writer `target` in the second checkpoint (step 4), as that writer fails."""
    full = OSError(errno.ENOSPC, "No space left on device")
    return {
        "weights": (checkpoint_files, "save_file", SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),
            "no space left on"),
        "optimizer": (torch, "save", RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 1315392 vs 1315280"), "RuntimeError"),
        "lanes": (checkpoint_files, "save_rank", full, "no space left on"),
        "trainer_state": (checkpoint, "write_json_atomic", OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
        "config": (checkpoint, "write_text_atomic", OSError(errno.EIO, "Input/output error"), "input/output error"),
        "sync": (checkpoint, "fsync_tree", full, "no space left on"),  # the flush before the manifest
    }[target]


@pytest.mark.parametrize("target", ["weights", "optimizer", "lanes", "trainer_state", "config", "sync"])
def test_a_write_that_fails_anywhere_in_a_checkpoint_is_one_line_naming_the_intact_one(tmp_path, capsys, monkeypatch,
                                                                                      target):
    owner, name, error, words = failing_once_at(target)
    real, calls = getattr(owner, name), []

    def writer(*args, **kwargs):
        in_checkpoint = any(".step_" in str(a) for a in args)
        if in_checkpoint:
            calls.append(args)
        if in_checkpoint and ".step_00000004" in " ".join(map(str, args)):
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, writer)
    code, err = train(capsys, tmp_path, "train.keep_checkpoints=2")
    assert calls, f"{target}: the writer was never called in a checkpoint"
    assert_failed_at_step_4(code, err, tmp_path / "d", words)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real filesystem of 96 MiB (tmpfs, mounted as root), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root; the injected failures above run anywhere")
def test_a_real_full_filesystem_is_named_as_such_with_its_free_space(small_tmpfs, capsys, monkeypatch):
    """The disk fills up after the step-2 checkpoint: the step-4 write meets a real ENOSPC."""
    save = checkpoint.Checkpointer.save

    def then_fill(self, step, *args):
        saved = save(self, step, *args)
        if step == 2:
            with open(small_tmpfs / "filler", "wb") as f:  # everything that is left
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                except OSError as e:
                    assert e.errno == errno.ENOSPC
        return saved

    monkeypatch.setattr(checkpoint.Checkpointer, "save", then_fill)
    code, err = train(capsys, small_tmpfs, "train.keep_checkpoints=2")
    assert_failed_at_step_4(code, err, small_tmpfs / "d", f"no space left on {small_tmpfs}")
    assert "MiB free" in err[0]


def test_every_file_reaches_the_disk_before_the_manifest_and_the_rename_after(tmp_path, capsys, monkeypatch):
    events = []
    fsync, write_json = os.fsync, checkpoint.write_json_atomic

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_write_json(path, *args, **kwargs):
        if Path(path).name == MANIFEST:
            events.append(("manifest", str(path)))
        write_json(path, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    monkeypatch.setattr(checkpoint, "write_json_atomic", recording_write_json)
    code, _ = train(capsys, tmp_path, "train.max_steps=2")
    assert code == 0
    (ckpt,) = list_checkpoints(tmp_path / "d")
    manifest_at = next(i for i, (kind, _) in enumerate(events) if kind == "manifest")
    tmp = Path(events[manifest_at][1]).parent
    synced_before = {Path(p).relative_to(tmp) for kind, p in events[:manifest_at] if kind == "fsync" and p.startswith(str(tmp))}
    files = {p.relative_to(ckpt) for p in ckpt.rglob("*") if p.name != MANIFEST}
    assert files <= synced_before  # every file and directory of the checkpoint
    after = [p for kind, p in events[manifest_at:] if kind == "fsync"]
    assert str(tmp_path / "d/checkpoints") in after  # the rename into place, on the disk too


def test_pruning_never_deletes_through_a_link_that_leads_outside_the_run(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runs/d").mkdir(parents=True)
    (tmp_path / "runs/d/checkpoints").symlink_to(elsewhere)
    code, err = train(capsys, tmp_path / "runs", "train.keep_checkpoints=1", "train.resume=auto")  # into runs/d itself
    assert code == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]
    assert sum("leads outside" in line for line in err) == 1, err


def truncate_keeping_the_manifest(ckpt: Path, name: str) -> None:
    """Damage a file and rewrite the manifest to match, so that only reading the file can tell."""
    path = ckpt / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"][name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    verify(ckpt)  # the manifest is satisfied


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rank_00000.pt"])
def test_a_checkpoint_that_cannot_be_read_is_passed_over_for_the_older_one(tmp_path, capsys, name):
    code, _ = train(capsys, tmp_path, "train.max_steps=4")
    assert code == 0
    run_dir = tmp_path / "d"
    truncate_keeping_the_manifest(run_dir / "checkpoints/step_00000004", name)
    code, err = train(capsys, tmp_path, "train.max_steps=6", "train.resume=auto")
    assert code == 0, err
    warned = [line for line in err + train.said if line.startswith("warning:")]
    assert len(warned) == 1 and name in warned[0] and "resuming from the older step_00000002" in warned[0], err
    assert [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())][:3] == [1, 2, 3]


def test_an_unreadable_checkpoint_named_explicitly_is_refused_in_one_line(tmp_path, capsys):
    code, _ = train(capsys, tmp_path, "train.max_steps=2")
    ckpt = tmp_path / "d/checkpoints/step_00000002"
    truncate_keeping_the_manifest(ckpt, "model.safetensors")
    code, err = train(capsys, tmp_path, "train.max_steps=4", f"train.resume={ckpt}", "train.run_name=e")
    assert code == 2 and len(err) == 1 and "model.safetensors cannot be read" in err[0], err
    assert not (tmp_path / "e").exists()
