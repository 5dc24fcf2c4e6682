"""What every data_prep command shares: the source arguments and one-line errors.

The source flags mirror the recipe's `data:` keys (--source = data.source, ...), so a corpus
prepared here is described by the same words as in a recipe. Any user-fixable problem ends the
command with "error: <message>" on stderr and exit code 2 (argparse's own convention).
"""

from __future__ import annotations

import argparse
import sys

from bdh_scale.data.config import DataConfig
from bdh_scale.errors import DataError


def add_source_args(p: argparse.ArgumentParser, source_required: bool = True) -> None:
    p.add_argument("--source", required=source_required,
                   help="bundled name (tinyshakespeare, europarl_en_fr), local .txt/.jsonl/"
                        ".parquet file, dir or glob, or a hub dataset name")
    p.add_argument("--text-column", default="text", help="column holding the text (jsonl/parquet/hub)")
    p.add_argument("--hub-config", default=None, help="hub dataset config, e.g. en-fr")
    p.add_argument("--hub-split", default="train", help="hub split to read")
    p.add_argument("--translation", nargs=2, metavar=("SRC", "TGT"), default=None,
                   help="render a translation-dict column as <SRC:...>/<TGT:...> pairs")
    p.add_argument("--doc-separator", default="\n\n",
                   help="text appended after each jsonl/parquet/hub row (default: blank line)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")


def config_from_args(args, tokenizer: str = "bytes") -> DataConfig:
    """The data section these arguments describe (checked when built: a bad value is a ConfigError)."""
    return DataConfig(source=args.source, text_column=args.text_column, tokenizer=tokenizer,
                      hub_config=args.hub_config, hub_split=args.hub_split,
                      translation=list(args.translation) if args.translation else None,
                      doc_separator=args.doc_separator, max_tokens=args.max_tokens, prefetch=0)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(main, argv=None) -> None:
    """Call main(argv); turn DataError / OSError into a one-line error and exit code 2."""
    try:
        main(argv)
    except DataError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}" if e.filename else str(e))
