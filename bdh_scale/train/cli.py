"""`bdh-train RECIPE [section.key=value ...]` (also `accelerate launch train.py ...`)."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from bdh_scale.config import load_config
from bdh_scale.errors import DataFailedMidRun, Fault, TrainingStopped, UsageError

USAGE_ERRORS = (UsageError, FileNotFoundError)
MAX_ERROR_CHARS = 4000  # the error line: a listing of a section's keys fits


OWN_FLAGS = ("--help", "-h", "--print-config")


def parse_args(argv):
    from bdh_scale.config.cli import help_listing

    p = argparse.ArgumentParser(
        prog="bdh-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train BDH from a YAML recipe. Overrides use the recipe's keys, as section.key=value or "
                    "--section.key value: train.max_steps=200 --model.n_layer 4 data.source=path/to/corpus.txt",
        epilog="configuration keys (section.key (type) = default, then what it does):\n\n" + help_listing(),
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/shakespeare_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value pairs applied after the recipe")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as a recipe (YAML) and exit, writing nothing")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    """Exit codes: 0 done or stopped by SIGTERM after saving; 1 a fault (disk, network, a lost peer,
    data that fails mid-run, a bug); 2 bad input, nothing written; 3 too many non-finite steps; 130 SIGINT. Every failure
    is one `error:` line (BDH_TRACEBACK=1 adds the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from bdh_scale.config.cli import dotted_overrides, resolved_yaml

        args = parse_args(dotted_overrides(argv, OWN_FLAGS))
        cfg = load_config(args.recipe, args.overrides)
        if args.print_config:
            print(resolved_yaml(cfg), end="")
            return 0
        from bdh_scale.train.loop import train  # heavy imports only once the recipe is known to be good

        result = train(cfg)
    except USAGE_ERRORS as e:  # the same on every rank (or decided by the main process): said once
        return report(str(e), 2, every_rank=False)
    except TrainingStopped as e:  # too many non-finite steps; the last good checkpoint is intact
        return report(str(e), 3, every_rank=False)
    except DataFailedMidRun as e:  # the data failed mid-run, agreed by every rank, the last completed step saved
        return report(str(e), 1, every_rank=False)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a fault, which may be this rank's own: every rank says what it saw
        return report(fault_message(e), 1, every_rank=True)
    # A signal stops the run after a checkpoint: SIGTERM (preemption) is a clean stop, SIGINT is Ctrl-C.
    return 130 if result.stopped_by == "SIGINT" else 0


def report(message: str, code: int, every_rank: bool) -> int:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("BDH_TRACEBACK") == "1":
        traceback.print_exc()
    if rank == 0 or every_rank:
        where = f"rank {rank}: " if every_rank and world > 1 else ""
        line = " ".join(message.split())
        if len(line) > MAX_ERROR_CHARS:  # a last guard: every message should be short by itself (utils/quote.py)
            line = line[:MAX_ERROR_CHARS - 3] + "..."
        print(f"error: {where}{line}", file=sys.stderr)
    return code


def fault_message(e: Exception) -> str:
    if isinstance(e, Fault):
        return str(e)
    from bdh_scale.train.distributed import lost_peer

    peer = lost_peer(e)
    if peer:
        return peer
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first} (set BDH_TRACEBACK=1 to see where)" if first else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
