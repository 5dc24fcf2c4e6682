"""The memory estimate that refuses runs (model/footprint.py) against the measured peak of real
training steps:

    python -m bdh_scale.bench.footprint                       # the default cases
    python -m bdh_scale.bench.footprint --case m1=recipes/shakespeare_m1.yaml:train.seq_len=512

Each case runs the trainer itself for a few steps in a fresh process (no validation, no
checkpoint, no sample), and its cost is the resident-set peak of that process minus its resident
set just before training (Python, torch and the libraries, which the estimate leaves out). The
table gives estimate / measured: below 1 the check errs towards allowing a run, as it should.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from bdh_scale.utils.child import failure_line

GIB = 2**30
CASES = {  # name -> (recipe, overrides)
    "shakespeare_cpu": ("recipes/shakespeare_cpu.yaml", []),
    "m1": ("recipes/shakespeare_m1.yaml", []),
    "m1_no_ckpt": ("recipes/shakespeare_m1.yaml", ["train.gradient_checkpointing=false"]),
    "m1_T1024": ("recipes/shakespeare_m1.yaml", ["train.seq_len=1024", "train.batch_size=2",
                                                 "train.gradient_checkpointing=false"]),
    "m1_T2048_chunked": ("recipes/shakespeare_m1.yaml", ["train.seq_len=2048", "train.batch_size=2",
                                                         "train.gradient_checkpointing=false"]),
    "m1_carry": ("recipes/shakespeare_m1.yaml", ["train.state=carry", "train.gradient_checkpointing=false"]),
    "gpt": ("recipes/shakespeare_cpu.yaml", ["model.arch=gpt", "model.token_shift=none", "model.n_embd=256",
                                             "model.n_layer=4", "train.seq_len=256", "model.block_size=256"]),
}
QUIET = ["train.max_steps=3", "train.eval_batches=0", "train.sample_tokens=0", "train.keep_checkpoints=0",
         "train.progress=false", "train.max_time_s=null", "train.memory_check=false"]


def worker(recipe: str, overrides: list[str]) -> dict:
    """Train a few steps here; the estimate and the measured peak above the resident set before."""
    from accelerate import Accelerator

    from bdh_scale.config import load_config
    from bdh_scale.train.checks.memory import step_footprint
    from bdh_scale.train.compute import resolve_mixed_precision
    from bdh_scale.train.loop import train

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(recipe, [*overrides, *QUIET, f"train.out_dir={out}"])
        accelerator = Accelerator(cpu=True)
        precision, _ = resolve_mixed_precision(cfg.train.mixed_precision, accelerator.device)
        estimate = step_footprint(cfg, accelerator, precision)
        before = psutil.Process().memory_info().rss
        train(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"estimate": estimate.total, "fixed": estimate.fixed, "activations": estimate.activations,
            "params": estimate.params, "measured": peak - before, "baseline": before}


def run_case(recipe: str, overrides: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bdh_scale.bench.footprint", "--worker",
                           json.dumps([recipe, overrides])], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": failure_line(proc.stderr)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_case(text: str) -> tuple[str, tuple[str, list[str]]]:
    name, _, spec = text.partition("=")
    recipe, *overrides = spec.split(":")
    return name, (recipe, overrides)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bdh_scale.bench.footprint", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", default=[], help="NAME=RECIPE[:section.key=value...] (repeatable); "
                   f"default: {', '.join(CASES)}")
    p.add_argument("--out", default="runs/bench/footprint.json", help="JSON of every case")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*json.loads(args.worker))))
        return 0
    cases = dict(parse_case(c) for c in args.case) or CASES
    results = {}
    print(f"{'case':18s} {'params':>8s} {'estimate':>10s} {'measured':>10s} {'ratio':>6s}")
    for name, (recipe, overrides) in cases.items():
        r = results[name] = {"recipe": recipe, "overrides": overrides, **run_case(recipe, overrides)}
        if "error" in r:
            print(f"{name:18s} error: {r['error']}")
            continue
        r["ratio"] = r["estimate"] / r["measured"]
        print(f"{name:18s} {r['params'] / 1e6:7.1f}M {r['estimate'] / GIB:9.3f}G {r['measured'] / GIB:9.3f}G "
              f"{r['ratio']:6.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
