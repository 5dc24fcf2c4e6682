"""Running many trainings: the command of one run, and the three ways to start a list of them
(here one after another, printed for elsewhere, or one SLURM job each). sweep.py and scaling.py
build the list; this module starts it."""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bdh_scale import rundir

SLURM_SCRIPT = Path(__file__).resolve().parent / "slurm.sh"  # package data: found in any install


@dataclass
class Job:
    name: str  # train.run_name
    recipe: str
    overrides: list[str]  # section.key=value, run_name / out_dir / resume=auto included


def job(name: str, recipe: str, overrides: list[str], out_dir: str) -> Job:
    """A run of `recipe` named `name` in out_dir; resume=auto, so an interrupted list continues."""
    return Job(name, recipe, [*overrides, f"train.run_name={name}", f"train.out_dir={out_dir}", "train.resume=auto"])


def train_command(recipe: str, overrides: list[str], launcher: str, config_file: str | None) -> list[str]:
    if launcher == "python":
        return [sys.executable, "-m", "bdh_scale.train.cli", recipe, *overrides]
    cmd = ["accelerate", "launch"]
    if config_file:
        cmd += ["--config_file", config_file]
    return cmd + ["-m", "bdh_scale.train.cli", recipe, *overrides]


def slurm_command(recipe: str, overrides: list[str], name: str, sbatch_args: list[str]) -> list[str]:
    return ["sbatch", f"--job-name={name}", *sbatch_args, str(SLURM_SCRIPT), recipe, *overrides]


def add_launch_args(p: argparse.ArgumentParser, run_mode: str) -> None:
    """The options every multi-run command shares; `run_mode` names the run-here mode."""
    p.add_argument("--out_dir", default="runs", help="where the runs go (train.out_dir)")
    p.add_argument("--mode", choices=[run_mode, "print", "slurm", "collect"], default=run_mode,
                   help=f"{run_mode}: train every point here, one after another, then collect; print: one "
                        "command per point; slurm: one sbatch job per point; collect: only read finished runs")
    p.add_argument("--launcher", choices=["python", "accelerate"], default="python",
                   help="run/print: train directly or under `accelerate launch`")
    p.add_argument("--config_file", help="accelerate config for --launcher accelerate (see launch/)")
    p.add_argument("--sbatch", action="append", default=[], metavar="ARG",
                   help="extra sbatch argument for --mode slurm, e.g. --sbatch=--nodes=2")
    p.add_argument("--dry-run", action="store_true", help="slurm: print the sbatch commands, submit nothing")


def dispatch(jobs: list[Job], args, force: bool = False) -> set[str]:
    """Start every job as --mode says; returns the names of jobs that failed here. Finished runs
    (with final weights) are skipped when run here, unless `force`."""
    failed = set()
    if args.mode == "slurm" and not args.dry_run and shutil.which("sbatch") is None:
        raise SystemExit("error: --mode slurm: sbatch not found on PATH; use --dry-run or --mode print")
    for i, j in enumerate(jobs, 1):
        if args.mode == "print":
            print(shlex.join(train_command(j.recipe, j.overrides, args.launcher, args.config_file)))
        elif args.mode == "slurm":
            cmd = slurm_command(j.recipe, j.overrides, j.name, args.sbatch)
            if args.dry_run:
                print(shlex.join(cmd))
            else:
                subprocess.run(cmd, check=True)
        elif args.mode != "collect":
            if (Path(args.out_dir) / j.name / rundir.FINAL).is_dir() and not force:
                print(f"[{i}/{len(jobs)}] {j.name}: finished already, skipped", flush=True)
                continue
            print(f"[{i}/{len(jobs)}] {j.name}", flush=True)
            rc = subprocess.run(train_command(j.recipe, j.overrides, args.launcher, args.config_file)).returncode
            if rc != 0:
                print(f"[{i}/{len(jobs)}] {j.name}: exit code {rc}", file=sys.stderr, flush=True)
                failed.add(j.name)
    return failed
