"""Scaling sweep: BDH vs the GPT baseline over model sizes, L(N) fits and a plot.

    python launch/scaling.py launch/scaling_cpu.yaml            # the CPU sweep, ~20 min on 2 cores
    python launch/scaling.py launch/scaling_gpu.yaml --mode slurm

The logic lives in bdh_scale/experiments/scaling.py; this file only makes it runnable from the repository root.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdh_scale.experiments.scaling import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
