"""What a tool needs to start a child process under `accelerate launch` and say why it failed.

A failed `accelerate launch` ends its stderr with torchrun's summary banner (a row of `=`), so
the last line says nothing; the cause is the worker's own `error:` line or the exception its
traceback ends with.
"""
from __future__ import annotations

import re
import socket

# An exception line of a traceback ("RuntimeError: ...", "torch.distributed.DistNetworkError: ...").
EXCEPTION = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b:?")
# torchrun's wrapper around a worker's failure: it names no cause of its own.
WRAPPERS = ("ChildFailedError",)


def free_port() -> int:
    """A TCP port nothing on this machine listens on now (for a launch's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failure_line(stderr: str) -> str:
    """The one line of a failed child's stderr that says why: its last `error:` line, else the
    last exception a traceback names (not torchrun's wrapper), else the exit code torchrun
    reports, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for keep in (lambda l: l.startswith("error:"),
                 lambda l: EXCEPTION.match(l) and not any(w in l for w in WRAPPERS),
                 lambda l: l.startswith("exitcode")):
        found = [line for line in lines if keep(line)]
        if found:
            return found[-1]
    return lines[-1] if lines else "(no output)"
