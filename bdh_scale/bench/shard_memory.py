"""`python -m bdh_scale.bench.shard_memory RECIPE [overrides]`: what each process holds under DDP
and under FSDP, measured, for one recipe on 2 processes (CPU over gloo, or GPUs).

For each launch config (launch/cpu_2proc.yaml: DDP; launch/fsdp.yaml: FSDP2) it starts the
processes with `accelerate launch`; each builds the trainer's accelerator, model and optimizer
(train/setup.py), takes one warm-up step on random tokens (so the optimizer state exists), then
a second step under torch's memory tracker (MemTracker; FSDPMemTracker under FSDP), tensor by
tensor, so neither the allocator's cache nor the heap counts. Per rank it reports what it holds
(parameters and optimizer state between steps, gradients after backward: under FSDP its shards)
and the step's peak, by kind at the moment of the peak (FSDP: the sharded parameters, and the full
ones all-gathered for forward and backward, which with one FSDP unit are the whole model).
Prints a table and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bdh_scale.utils.child import failure_line, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"ddp": "cpu_2proc.yaml", "fsdp": "fsdp.yaml"}


def tensor_mb(tensors) -> float:
    """MiB of the tensors this process holds (a DTensor: its local shard)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total / 2**20


def worker(recipe: str, overrides: list[str], out: Path) -> None:
    """One process of a launch: measure, gather to rank 0, write JSON there."""
    from accelerate.utils import DistributedType, gather_object

    from bdh_scale.config import load_config
    from bdh_scale.train.setup import make_accelerator, make_model_and_optimizer
    from bdh_scale.utils.tree import tensors

    cfg = load_config(recipe, overrides)
    acc, precision = make_accelerator(cfg)
    torch.manual_seed(cfg.train.seed)  # the same init everywhere (setup.py)
    model, opt = make_model_and_optimizer(cfg, acc, precision)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    g = torch.Generator().manual_seed(acc.process_index)
    x, y = (torch.randint(0, cfg.model.vocab_size, (B, T), generator=g).to(acc.device) for _ in range(2))

    held = {}

    def step():
        acc.backward(model(x, y).loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        held["gradients"] = tensor_mb(p.grad for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    fsdp = acc.distributed_type == DistributedType.FSDP
    if fsdp:
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        tracker = FSDPMemTracker(acc.unwrap_model(model), opt.optimizer)
    else:
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
        tracker.track_external(model, opt)
    with tracker:
        step()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    mine = {"rank": acc.process_index,
            "at_peak_mb": {str(k).split(".")[-1].lower(): v / 2**20 for k, v in peak.items()},
            "held_mb": {"parameters": tensor_mb(model.parameters()), "gradients": held["gradients"],
                        "optimizer_state": tensor_mb(tensors(opt.optimizer.state_dict()["state"]))}}
    everyone = gather_object([mine])
    if acc.is_main_process:
        out.write_text(json.dumps({"distributed": acc.distributed_type.value, "processes": acc.num_processes,
                                   "params": sum(p.numel() for p in model.parameters()), "ranks": everyone}, indent=2))
    # Leave together and close the process group, as the trainer does: a rank that exits while
    # its peer still holds gloo connections can fail the launch after the work is done.
    acc.wait_for_everyone()
    acc.end_training()


def measure(config: str, recipe: str, overrides: list[str], processes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / config),
               "--num_processes", str(processes), "--main_process_port", str(free_port()),
               "-m", "bdh_scale.bench.shard_memory", "--worker", "--out", str(out),
               recipe, *overrides]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: {config}: {failure_line(proc.stderr)}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bdh_scale.bench.shard_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        worker(args.recipe, args.overrides, Path(args.out))
        return 0
    results = {name: measure(config, args.recipe, args.overrides, args.processes) for name, config in CONFIGS.items()}
    print(f"MiB per rank, {args.recipe} {' '.join(args.overrides)} ({results['ddp']['params'] / 1e6:.2f}M parameters)")
    kinds = sorted({k for r in results.values() for rank in r["ranks"] for k in rank["at_peak_mb"]})
    columns = [(name, rank) for name, r in results.items() for rank in r["ranks"]]
    print(f"{'':<30}" + "".join(f"{name.upper() + ' rank ' + str(rank['rank']):>16}" for name, rank in columns))
    held = ("parameters", "gradients", "optimizer_state")
    for label, get in ([(f"held: {k}", lambda rank, k=k: rank["held_mb"][k]) for k in held]
                       + [(f"at the peak: {k}", lambda rank, k=k: rank["at_peak_mb"].get(k)) for k in kinds]):
        cells = [get(rank) for _, rank in columns]
        print(f"{label:<30}" + "".join(f"{'-' if c is None else f'{c:.2f}':>16}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
