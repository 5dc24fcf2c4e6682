"""A write that failed, said as what happened to the disk: "no space left on /data (3 MiB free)".

The writers a run uses fail in their own words: Python's OSError carries an errno (ENOSPC, EDQUOT,
EIO), safetensors raises a SafetensorError wrapping the OS error's text, and torch.save's zip
writer a RuntimeError ("[enforce fail at inline_container.cc] . unexpected pos", "file write
failed") that names neither. So the errno is taken where there is one, the text read where it is
quoted, and otherwise the filesystem itself is asked: a write that failed on a filesystem with
next to nothing free ran out of space.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

NEARLY_FULL = 64 << 20  # bytes free below which a failed write is put down to a full disk
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")
_TEXTS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
          errno.EIO: "Input/output error", errno.EROFS: "Read-only file system"}


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing ancestor)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int | None:
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return None


def _errno(e: BaseException) -> int | None:
    """The OS error behind `e`: its own errno, a chained OSError's, or one its text quotes."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    return next((code for code, words in _TEXTS.items() if words in text), None)


def is_write_failure(e: BaseException) -> bool:
    """Whether `e`, raised while files were written, is the write failing (not a bug or a peer)."""
    if isinstance(e, OSError):
        return True
    if type(e).__name__ == "SafetensorError":  # safetensors' only errors: bad input, or the OS refusing
        return True
    return isinstance(e, RuntimeError) and (any(k in str(e) for k in _TORCH_WRITER) or _errno(e) is not None)


def describe_write_failure(e: BaseException, directory: str | Path) -> str:
    """What happened, in words about the filesystem of `directory`."""
    where = mount_point(directory)
    free = free_bytes(directory)
    left = "" if free is None else f": {free / 2**20:,.0f} MiB free"
    code = _errno(e)
    if code == errno.ENOSPC or (code is None and free is not None and free < NEARLY_FULL):
        return f"no space left on {where}{left}"
    if code == errno.EDQUOT:
        return f"the disk quota on {where} is exceeded{left}"
    if code == errno.EIO:
        return f"an input/output error on {where} (a failing disk or a lost network mount)"
    if code == errno.EROFS:
        return f"{where} is mounted read-only"
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
    name = getattr(e, "filename", None)
    return f"{type(e).__name__}: {text}" + (f" ({name})" if name else "") + f" on {where}{left}"
