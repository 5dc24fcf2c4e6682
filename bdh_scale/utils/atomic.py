"""Atomic writes: a file or directory appears complete under its final name, or not at all.

Everything is first written under a temporary name in the same directory (same filesystem) and
then renamed with os.replace, which is atomic on POSIX: a crash mid-write leaves a stray `.tmp`
entry, never a truncated file that looks valid.

A rename is atomic against a crash of the process, not of the machine: after a power loss the
new name may point at data that never reached the disk. `durable=True` fsyncs what was written
before the rename and the directory after it, for files whose existence means something (a
checkpoint's manifest says the checkpoint is complete: train/checkpoint/checkpointer.py fsyncs every file
before writing it).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, is_dir: bool = False, durable: bool = False):
    """Yield a temporary sibling path; on success rename it onto `path` (replacing it). durable:
    the written file (or the directory's own entries) reach the disk before the rename, and the
    rename itself after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a run on a shared filesystem is for the team to read
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        _give_umask_modes(tmp, 0o666 & ~umask)
        if durable:
            if not is_dir:
                fsync_path(target)
            fsync_path(tmp)
        if is_dir:
            old = None
            if path.exists():  # a directory cannot be os.replace'd onto a non-empty one: swap
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
        if durable:
            fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj, durable: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable)


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under `root`, then every directory, deepest first, `root` last."""
    root = Path(root)
    dirs = [root]
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            fsync_path(p)
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        fsync_path(d)


def _give_umask_modes(root: Path, mode: int) -> None:
    """Files that a writer created private (safetensors writes 0600) get the mode every other file
    gets from the umask, so everything the run writes is readable alike."""
    for f in root.rglob("*"):
        if f.is_file() and f.stat().st_mode & 0o777 != mode:
            f.chmod(mode)
