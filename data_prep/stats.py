"""Corpus statistics: what is in a source, and how it will be served as lanes.

    python -m data_prep.stats --source europarl_en_fr --tokenizer runs/bpe/tokenizer.json \
        --batch-size 32 --seq-len 512

Text sources report rows, lines, characters, UTF-8 bytes, distinct and most common characters;
every source (shard dirs too) reports tokens, distinct and most common tokens, bytes per token
and the train/val split. With --batch-size/--seq-len (and --world-size) it also says how long
each lane's stretch is and how many optimizer steps make one epoch, which is what you need to
choose train.max_steps. --json prints one machine-readable object instead of the table.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
from tqdm import tqdm

from bdh_scale.data.bundle import measure_bytes_per_token
from bdh_scale.data.kinds import kind_of
from bdh_scale.data.sources.reader import open_text_source
from bdh_scale.data.sources.shards import is_shard_dir
from data_prep._cli import add_source_args, config_from_args, fail, run


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m data_prep.stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--tokenizer", default="bytes", help="'bytes' or a tokenizer .json")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail fraction")
    p.add_argument("--batch-size", type=int, default=None, help="lanes per rank (B)")
    p.add_argument("--world-size", type=int, default=1, help="number of ranks (W)")
    p.add_argument("--seq-len", type=int, default=None, help="window length T")
    p.add_argument("--top", type=int, default=10, help="how many most-common items to list")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args(argv)


def text_stats(cfg, top: int) -> dict:
    rows = lines = chars = nbytes = 0
    counter: Counter = Counter()
    for batch in tqdm(open_text_source(cfg).batches(), desc="read text", unit=" batches",
                      leave=False):
        for r in batch:
            rows += 1
            lines += r.count("\n")
            chars += len(r)
            nbytes += len(r.encode("utf-8"))
            counter.update(r)
    return {"rows": rows, "lines": lines, "chars": chars, "utf8_bytes": nbytes,
            "distinct_chars": len(counter),
            "top_chars": [[c, n] for c, n in counter.most_common(top)]}


def token_stats(cfg, top: int) -> dict:
    tokenizer, stream, describe, _ = kind_of(cfg.source).tokens(cfg)
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    chunk = 1 << 22
    for a in range(0, len(stream), chunk):
        counts += np.bincount(stream.read(a, min(len(stream), a + chunk)),
                              minlength=tokenizer.vocab_size)[:tokenizer.vocab_size]
    order = np.argsort(-counts)[:top]
    n_train = int(len(stream) * (1.0 - cfg.val_fraction))
    return {"source": describe, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "tokens": len(stream), "train_tokens": n_train, "val_tokens": len(stream) - n_train,
            "distinct_tokens": int((counts > 0).sum()),
            "bytes_per_token": round(measure_bytes_per_token(tokenizer, stream), 4),
            "top_tokens": [[tokenizer.decode([int(i)]), int(counts[i])] for i in order
                           if counts[i] > 0]}


def lane_stats(train_tokens: int, B: int, W: int, T: int) -> dict:
    n_lanes = W * B
    stretch = train_tokens // n_lanes
    steps = (stretch - 1) // T if stretch > T else 0
    return {"lanes": n_lanes, "stretch_tokens": stretch, "tokens_per_step": n_lanes * T,
            "steps_per_epoch": steps, "fits": steps > 0,
            "min_tokens_needed": n_lanes * (T + 1)}


def main(argv=None) -> dict:
    args = parse(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        fail(f"--val-fraction: {args.val_fraction} is outside [0, 1)")
    if (args.batch_size is None) != (args.seq_len is None):
        fail("--batch-size and --seq-len go together; give both or neither")
    for name in ("batch_size", "seq_len", "world_size", "top"):
        v = getattr(args, name)
        if v is not None and v < 1:
            fail(f"--{name.replace('_', '-')}: {v} is not a positive integer")
    cfg = config_from_args(args, tokenizer=args.tokenizer)
    cfg.val_fraction = args.val_fraction
    out = {} if is_shard_dir(cfg.source) else text_stats(cfg, args.top)
    out.update(token_stats(cfg, args.top))
    if out["tokens"] == 0:
        fail(f"--source: {out['source']} is empty (0 tokens)")
    if args.batch_size:
        out["lanes"] = lane_stats(out["train_tokens"], args.batch_size, args.world_size,
                                  args.seq_len)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        for k, v in out.items():
            shown = json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            print(f"{k:>16}: {shown}")
    return out


if __name__ == "__main__":
    run(main)
