"""Tiny training runs for the checkpoint / fault / distributed tests: in-process or as real processes.

Every run uses a 2-layer, 32-wide BDH on bundled tiny Shakespeare, dropout 0 and the parallel
attention form, so two runs with the same settings compute the same numbers. Subprocess runs get
OMP_NUM_THREADS=1 (the suite shares 2 cores), and runs that are compared bit for bit must use
the same launcher and thread count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bdh_scale.utils.child import free_port

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "shakespeare_cpu.yaml"
TINY = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=8",
        "model.dropout=0.0", "model.attn_backend=parallel", "train.seq_len=32", "train.eval_batches=2",
        "train.sample_tokens=0", "train.progress=false", "train.warmup_steps=5", "train.lr=0.005",
        "train.log_every=1", "train.eval_every=0", "train.max_time_s=null"]


# W=2 processes x B=2 lanes x 2 micro-batches = 8 global lanes, with TBPTT state, gradient
# checkpointing and a checkpoint every 3 steps: the 2-process runs of the DDP and FSDP tests.
TWO = ["train.max_steps=8", "train.checkpoint_every=3", "train.eval_every=4", "train.state=carry", "train.batch_size=2",
       "train.grad_accum_steps=2", "train.gradient_checkpointing=true", "data.prefetch=2", "train.resume=auto"]


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


def command(processes: int, out_dir, run_name, *extra, config: str = "cpu_2proc.yaml") -> list[str]:
    """train.py as 1 plain process, or under `accelerate launch` with a launch/ config (the CPU
    2-process one: DDP over gloo; fsdp.yaml: FSDP2)."""
    args = [str(ROOT / "train.py"), str(RECIPE), *overrides(out_dir, run_name, *extra)]
    if processes == 1 and config == "cpu_2proc.yaml":
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / config),
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *args]


def train_process(processes: int, out_dir, run_name, *extra, env: dict | None = None, timeout=300,
                  config: str = "cpu_2proc.yaml"):
    """Run to the end; returns the CompletedProcess (stdout and stderr captured)."""
    return subprocess.run(command(processes, out_dir, run_name, *extra, config=config), cwd=ROOT,
                          env=clean_env(env), capture_output=True, text=True, timeout=timeout)


def node_command(machine_rank: int, port: int, out_dir, run_name, *extra) -> list[str]:
    """One of two "nodes" of one CPU process each on this machine, launched with the flags
    launch/slurm.sh passes on a cluster."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch/cpu_2proc.yaml"),
            "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine_rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static",
            "--same_network", str(ROOT / "train.py"), str(RECIPE), *overrides(out_dir, run_name, *extra)]


def train_nodes(out_dir, run_name, *extra, env: dict | None = None, timeout=300) -> list[tuple[int, str, str]]:
    """Both nodes to the end: [(returncode, stdout, stderr)] for machine ranks 0 and 1."""
    port = free_port()
    nodes = [subprocess.Popen(node_command(i, port, out_dir, run_name, *extra), cwd=ROOT, env=clean_env(env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        outputs = [node.communicate(timeout=timeout) for node in nodes]
        return [(node.returncode, out, err) for node, (out, err) in zip(nodes, outputs)]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()


def start_process(out_dir, run_name, *extra, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(1, out_dir, run_name, *extra), cwd=ROOT, env=clean_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main_in_process(*argv) -> int:
    """bdh-train's main() in this process (its exit code; output goes to capsys)."""
    from accelerate.state import AcceleratorState

    from bdh_scale.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return main([str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _not_json(constant):
    raise ValueError(f"{constant} is not valid JSON")


def metrics(run_dir) -> list[dict]:
    """The rows of metrics.jsonl, read as strict JSON (a bare NaN or Infinity fails)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line, parse_constant=_not_json) for line in path.read_text().splitlines()] if path.is_file() else []


def snapshot(directory) -> dict:
    """{relative path: bytes} of every file under directory except the lock file: what a refused
    or diverted run must leave as it was."""
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def children(pid: int) -> list[int]:
    """Live child processes of pid (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics(run_dir) if "loss" in r]


def rank_state(checkpoint, rank: int = 0) -> dict:
    return torch.load(Path(checkpoint) / f"rank_{rank:05d}.pt", map_location="cpu", weights_only=True)


def weights(checkpoint) -> dict:
    """The full model weights of a checkpoint, unsharded or FSDP's shards put together in this process."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "sharded").is_dir():
        return load_file(str(checkpoint / "model.safetensors"))
    import torch.distributed.checkpoint as dcp

    from bdh_scale.config import load_config
    from bdh_scale.model import build_model
    from bdh_scale.train.checkpoint.files import SafeLoadPlanner, SafeReader

    template = build_model(load_config(checkpoint / "config.yaml").model).state_dict()
    state = {"model": {k: torch.empty_like(v) for k, v in template.items()}}
    dcp.load(state, storage_reader=SafeReader(checkpoint / "sharded"), planner=SafeLoadPlanner(), no_dist=True)
    return state["model"]


def bpe_tokenizer_file(directory, vocab_size: int = 320) -> Path:
    """A small byte-level BPE learned on the bundled Shakespeare, saved as <directory>/tokenizer.json."""
    from bdh_scale.data.tokenize.bpe import train_bpe

    text = (ROOT / "bdh_scale/data/bundled/tinyshakespeare/input.txt").read_text()[:200_000]
    return train_bpe(iter(text.splitlines(keepends=True)), vocab_size=vocab_size).save(directory)
