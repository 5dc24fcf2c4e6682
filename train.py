"""Entry point: `accelerate launch train.py recipes/shakespeare_m1.yaml [section.key=value ...]`.

The same file runs with plain `python train.py ...`; the training story is in
bdh_scale/train/loop.py.
"""
import sys

from bdh_scale.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
