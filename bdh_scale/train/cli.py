"""`bdh-train RECIPE [section.key=value ...]` (also `accelerate launch train.py ...`)."""
from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, load_config
from ..data.errors import DataError

USAGE_ERRORS = (ConfigError, DataError, FileNotFoundError)


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
        from .loop import train  # heavy imports only once the recipe is known to be good

        train(cfg)
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
