"""One writer per directory: an exclusive OS lock on a file inside it, held for as long as the
process lives.

The lock is `flock` on `<dir>/.lock`. The kernel drops it when the holder exits, however it exits
(kill -9, OOM, a node's job cancelled), so a crash never leaves a stale lock and a requeued job
finds its directory free. The holder writes who it is into the file (pid, host, start time), so a
second process can say which run is in the way. On NFS the Linux client maps flock onto POSIX
byte-range locks, which the server arbitrates between nodes. Where the filesystem has no locks at
all (ENOLCK, EOPNOTSUPP: e.g. Lustre mounted without `flock`), `acquire` says so and returns
without one rather than refusing every run.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from bdh_scale.utils.bounded import read_json

LOCK_FILE = ".lock"
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockHeld(Exception):
    """Another live process holds the lock; `holder` is what it wrote about itself."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(f"{path.parent} is in use by another process ({describe_holder(holder)})")


class DirLock:
    """An exclusive lock on a directory. `acquire()` or LockHeld; `release()` (also on exit)."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILE
        self.fd: int | None = None
        self.unsupported: str | None = None  # why no lock could be taken, when the filesystem has none

    def acquire(self) -> "DirLock":
        # O_CREAT without O_TRUNC: a process that fails to get the lock leaves the holder's note alone.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(self.path, read_holder(self.path)) from None
            if e.errno in UNSUPPORTED:
                self.unsupported = f"{self.path.parent} is on a filesystem without file locks ({e.strerror})"
                return self
            raise
        self.fd = fd
        note = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        """Let go (the file stays: deleting a lock file would race with a process opening it)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: Path) -> dict:
    try:
        holder = read_json(path, 1 << 16, what="lock") if Path(path).stat().st_size else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):  # UsageError (a lock file that is not ours) is a ValueError
        return {}


def describe_holder(holder: dict) -> str:
    """'pid 123, host node-a, started 2025-01-01T10:00:00+00:00' (what the holder wrote)."""
    parts = [f"{k} {holder[k]}" for k in ("pid", "host", "started") if k in holder]
    return ", ".join(parts) if parts else "holder unknown"
