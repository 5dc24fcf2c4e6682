"""The memory experiment: reset vs carried state vs forgetting gates vs a local window, on Europarl
and the passkey source, loss by context and recall against distance.

    python launch/memory.py launch/memory_cpu.yaml            # the CPU experiment (docs/results/memory_cpu.*)
    python launch/memory.py launch/memory_gpu.yaml --mode slurm --sbatch=--gres=gpu:1

The logic lives in bdh_scale/experiments/memory.py; this file only makes it runnable from the
repository root.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdh_scale.experiments.memory import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
