"""Train a byte-level BPE tokenizer on a corpus and save it as a tokenizers .json.

    python -m data_prep.train_bpe --source europarl_en_fr --vocab-size 4096 \
        --out runs/bpe_europarl/tokenizer.json

Use the result as `data.tokenizer: <out>` in a recipe or `--tokenizer <out>` for
data_prep.tokenize; the training run copies it into its run dir. Byte-level means nothing is
ever unknown: merges are learned on top of the 256 UTF-8 byte symbols (bdh_scale/data/tokenize/bpe.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tqdm import tqdm

from bdh_scale.data.sources.reader import open_text_source
from bdh_scale.data.tokenize.bpe import MIN_VOCAB, train_bpe
from data_prep._cli import add_source_args, config_from_args, fail, run


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m data_prep.train_bpe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--vocab-size", type=int, default=8192, help="final vocabulary size")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum count for a merge")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="train on at most this many bytes of text (default: all)")
    p.add_argument("--special-tokens", nargs="*", default=[], help="tokens never split")
    p.add_argument("--out", required=True, help="tokenizer .json path, or a dir for tokenizer.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.max_bytes is not None and args.max_bytes < 1:
        fail(f"--max-bytes: {args.max_bytes} is not a positive integer")
    if args.vocab_size < MIN_VOCAB + len(args.special_tokens):
        fail(f"--vocab-size: {args.vocab_size} leaves no room for merges; use at least "
             f"{MIN_VOCAB + len(args.special_tokens)} (256 bytes + specials + 1), e.g. 8192")
    cfg = config_from_args(args)
    source = open_text_source(cfg)

    def texts(bar):
        seen = 0
        for rows in source.batches():
            for r in rows:
                yield r
                n = len(r.encode("utf-8"))
                seen += n
                bar.update(n)
                if args.max_bytes is not None and seen >= args.max_bytes:
                    return

    with tqdm(total=args.max_bytes, unit="B", unit_scale=True, desc="read text") as bar:
        tok = train_bpe(texts(bar), args.vocab_size, min_frequency=args.min_frequency,
                        special_tokens=args.special_tokens)
    out = Path(args.out)
    if out.suffix != ".json":
        out = out / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.tok.save(str(out))
    print(f"saved {tok.name} (vocab {tok.vocab_size}) to {os.fspath(out)}")
    return tok


if __name__ == "__main__":
    run(main)
