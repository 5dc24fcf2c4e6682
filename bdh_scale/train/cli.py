"""`bdh-train RECIPE [section.key=value ...]` (also `accelerate launch train.py ...`)."""
from __future__ import annotations

import argparse
import sys

from bdh_scale.config import load_config
from bdh_scale.errors import TrainingStopped, UsageError

USAGE_ERRORS = (UsageError, FileNotFoundError)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bdh-train",
        description="Train BDH from a YAML recipe. Overrides use the recipe's keys: "
                    "train.max_steps=200 model.n_layer=4 data.source=path/to/corpus.txt",
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/shakespeare_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value pairs applied after the recipe")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
        from bdh_scale.train.loop import train  # heavy imports only once the recipe is known to be good

        result = train(cfg)
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:  # too many non-finite steps; the last good checkpoint is intact
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # A signal stops the run after a checkpoint: SIGTERM (preemption) is a clean stop, SIGINT is Ctrl-C.
    return 130 if result.stopped_by == "SIGINT" else 0


if __name__ == "__main__":
    sys.exit(main())
