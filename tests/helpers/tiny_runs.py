"""Tiny training runs for the checkpoint / fault / distributed tests: in-process or as real processes.

Every run uses a 2-layer, 32-wide BDH on bundled tiny Shakespeare, dropout 0 and the parallel
attention form, so two runs with the same settings compute the same numbers. Subprocess runs get
OMP_NUM_THREADS=1 (the suite shares 2 cores), and runs that are compared bit for bit must use
the same launcher and thread count.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "shakespeare_cpu.yaml"
TINY = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=8",
        "model.dropout=0.0", "model.attn_backend=parallel", "train.seq_len=32", "train.eval_batches=2",
        "train.sample_tokens=0", "train.progress=false", "train.warmup_steps=5", "train.lr=0.005",
        "train.log_every=1", "train.eval_every=0", "train.max_time_s=null"]


def overrides(out_dir, run_name, *extra) -> list[str]:
    return TINY + [f"train.out_dir={out_dir}", f"train.run_name={run_name}", *extra]


def train_in_process(out_dir, run_name, *extra):
    from accelerate.state import AcceleratorState

    from bdh_scale.config import load_config
    from bdh_scale.train.loop import train

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return train(load_config(RECIPE, overrides(out_dir, run_name, *extra)))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def clean_env(extra_env: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDH_", "ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra_env or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, out_dir, run_name, *extra) -> list[str]:
    """train.py as 1 plain process, or under `accelerate launch` with the CPU 2-process config."""
    args = [str(ROOT / "train.py"), str(RECIPE), *overrides(out_dir, run_name, *extra)]
    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch/cpu_2proc.yaml"),
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *args]


def train_process(processes: int, out_dir, run_name, *extra, env: dict | None = None, timeout=300):
    """Run to the end; returns the CompletedProcess (stdout and stderr captured)."""
    return subprocess.run(command(processes, out_dir, run_name, *extra), cwd=ROOT, env=clean_env(env),
                          capture_output=True, text=True, timeout=timeout)


def start_process(out_dir, run_name, *extra, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(1, out_dir, run_name, *extra), cwd=ROOT, env=clean_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics(run_dir) if "loss" in r]


def rank_state(checkpoint, rank: int = 0) -> dict:
    return torch.load(Path(checkpoint) / f"rank_{rank:05d}.pt", map_location="cpu", weights_only=True)


def weights(checkpoint) -> dict:
    """Model weights of a checkpoint, without DDP's `module.` prefix."""
    sd = load_file(str(Path(checkpoint) / "model.safetensors"))
    return {k.removeprefix("module."): v for k, v in sd.items()}


def bpe_tokenizer_file(directory, vocab_size: int = 320) -> Path:
    """A small byte-level BPE learned on the bundled Shakespeare, saved as <directory>/tokenizer.json."""
    from bdh_scale.data.bpe import train_bpe

    text = (ROOT / "bdh_scale/data/bundled/tinyshakespeare/input.txt").read_text()[:200_000]
    return train_bpe(iter(text.splitlines(keepends=True)), vocab_size=vocab_size).save(directory)
