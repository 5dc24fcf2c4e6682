"""`python -m bdh_scale.bench`: the bdh-bench command."""
import sys

from bdh_scale.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
