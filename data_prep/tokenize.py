"""Tokenize a corpus once into a shard dir that training memory-maps.

    python -m data_prep.tokenize --source europarl_en_fr --tokenizer runs/bpe/tokenizer.json \
        --out data/europarl_bpe

Writes <out>/tokens_NNNNNN.bin (uint8 ids for bytes, uint16 for BPE up to 65,536 ids),
<out>/tokenizer.json and <out>/meta.json with token counts and sha256 checksums (format in
bdh_scale/data/shards.py). Then use `data.source: <out>` in a recipe: no tokenizing at start-up,
no corpus in RAM, every rank shares the same pages, and corrupted shards are refused on load.
"""

from __future__ import annotations

import argparse
import os

from tqdm import tqdm

from bdh_scale.data.shards import META_FILE, ShardWriter, is_shard_dir
from bdh_scale.data.sources import local_files, looks_like_path, open_text_source
from bdh_scale.data.tokenizer import ByteTokenizer, load_tokenizer
from data_prep._cli import add_source_args, config_from_args, fail, run


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m data_prep.tokenize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--tokenizer", default="bytes",
                   help="'bytes' or a tokenizer .json (from data_prep.train_bpe)")
    p.add_argument("--out", required=True, help="shard dir to write")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="tokens per .bin file (default 100M)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard dir")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.shard_tokens < 1:
        fail(f"--shard-tokens: {args.shard_tokens} is not a positive integer")
    if is_shard_dir(args.source):
        fail(f"--source: '{args.source}' is already a shard dir; give the text corpus instead")
    if os.path.exists(os.path.join(args.out, META_FILE)) and not args.overwrite:
        fail(f"--out: '{args.out}' already holds a shard dir; pass --overwrite to replace it")
    cfg = config_from_args(args, tokenizer=args.tokenizer)
    tokenizer = load_tokenizer(cfg.tokenizer)
    source = open_text_source(cfg, raw_bytes=isinstance(tokenizer, ByteTokenizer))
    total = (sum(os.path.getsize(f) for f in local_files(cfg.source))
             if looks_like_path(cfg.source) else None)
    writer = ShardWriter(args.out, tokenizer, args.shard_tokens, source=source.describe)
    n = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenize ({tokenizer.name})") as bar:
        for rows in source.batches():
            ids = tokenizer.encode_rows(rows)
            if cfg.max_tokens is not None:
                ids = ids[:cfg.max_tokens - n]
            nbytes = sum(len(r) if isinstance(r, bytes) else len(r.encode("utf-8")) for r in rows)
            writer.add(ids, text_bytes=nbytes)
            n += len(ids)
            bar.update(nbytes)
            bar.set_postfix(tokens=f"{n:,}")
            if cfg.max_tokens is not None and n >= cfg.max_tokens:
                break
    if n == 0:
        fail(f"--source: {source.describe} is empty (0 tokens); nothing written")
    meta = writer.close()
    print(f"wrote {meta['num_tokens']:,} tokens ({meta['dtype']}, vocab {meta['vocab_size']}) "
          f"in {len(meta['shards'])} shard(s) to {args.out}")
    return meta


if __name__ == "__main__":
    run(main)
