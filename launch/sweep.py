"""Run a grid of recipe overrides and collect the runs' final metrics into one table.

    python launch/sweep.py recipes/shakespeare_cpu.yaml --name depth --grid model.n_layer=2,4 \
        --grid train.seq_len=128,256 --set train.max_steps=300 [--mode sequential|print|slurm|collect]

The logic lives in bdh_scale/experiments/sweep.py (its docstring lists every option); this file only makes it
runnable from the repository root without installing the package.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdh_scale.experiments.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
