"""Progress that any log shows. On a terminal: tqdm's bar. Anywhere else (a file, a pipe, SLURM's
output, `| tee`), or with train.progress=false: one plain line every train.log_every steps,

    step 120/1500 (8%) | loss 2.3456 nats/token | lr 4.00e-03 | 21,345 tokens/s | MFU 1.2% |
    elapsed 0:01:02 | ETA 0:11:40 | memory 512 MiB resident

and never a carriage return (a bar redrawn in a file is one endless line). Only the main process
writes. Losses are nats per token; bits per byte is named as such where it appears.
"""
from __future__ import annotations

import datetime
import sys
import time

import psutil
import torch
from tqdm.auto import tqdm

MEMORY_KIND = {"cuda": "peak allocated", "mps": "allocated"}  # anything else: the process's resident set


def memory_in_use(device: torch.device) -> int:
    """Bytes in use on `device`: CUDA's peak allocated, MPS's allocated, the CPU process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if device.type == "mps":
        return torch.mps.current_allocated_memory()
    return psutil.Process().memory_info().rss


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0))))


class Progress:
    """The bar or the plain lines of one run, from step `start` to `total`."""

    def __init__(self, tc, start: int, main: bool, device: torch.device, stream=None):
        self.stream = stream or sys.stderr
        self.memory_kind = MEMORY_KIND.get(device.type, "resident")
        self.main, self.total, self.start = main, tc.max_steps, min(start, tc.max_steps)
        self.terminal = bool(tc.progress) and self.stream.isatty()
        self.bar = tqdm(total=self.total, initial=self.start, dynamic_ncols=True, desc="train", file=self.stream,
                        disable=not (self.terminal and main))
        self.began = time.perf_counter()

    def step(self) -> None:
        self.bar.update(1)

    def say(self, text: str) -> None:
        """A line of its own (a validation, a warning) that does not break the bar."""
        if not self.main:
            return
        if self.terminal:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def row(self, row: dict) -> None:
        """A metrics row: the bar's postfix on a terminal, else one plain line."""
        if not self.main:
            return
        if self.terminal:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            return
        print(self.line(row), flush=True)

    def line(self, row: dict) -> str:
        step, elapsed = row["step"], time.perf_counter() - self.began
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total} ({step / self.total:.0%})", f"loss {row['loss']:.4f} nats/token",
                 f"lr {row['lr']:.2e}", f"{row['tokens_per_s']:,.0f} tokens/s"]
        if "mfu" in row:
            parts.append(f"MFU {row['mfu']:.1%}")
        parts += [f"elapsed {clock(elapsed)}", f"ETA {clock(eta) if eta == eta else '?'}"]
        if "memory_mib" in row:
            parts.append(f"memory {row['memory_mib']:,.0f} MiB {self.memory_kind}")
        return " | ".join(parts)

    def close(self) -> None:
        self.bar.close()
