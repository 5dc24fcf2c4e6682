"""Tokenize a corpus once into a shard dir that training memory-maps.

    python -m data_prep.tokenize --source europarl_en_fr --tokenizer runs/bpe/tokenizer.json \
        --out data/europarl_bpe --workers 4

Writes <out>/tokens_NNNNNN.bin (uint8 ids for bytes, uint16 for BPE up to 65,536 ids),
<out>/tokenizer.json, a document index <out>/doc_starts.bin for sources made of documents
(rows of jsonl/parquet/Hub data) and <out>/meta.json with token counts, sha256 checksums, the
source and its fingerprint (files, sizes and times, or the Hub commit) and the tokenizer's hash
(format in bdh_scale/data/sources/shards.py). Then use `data.source: <out>` in a recipe: no tokenizing
at start-up, no corpus in RAM, every rank shares the same pages, corrupted shards and another
tokenizer are refused on load.

--workers K tokenizes in K processes; the output is in corpus order and byte for byte the same
as with one worker.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from tqdm import tqdm

from bdh_scale.data.sources.reader import local_files, looks_like_path, open_text_source, source_fingerprint
from bdh_scale.data.sources.shards import META_FILE, ShardWriter, is_shard_dir
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer, load_tokenizer
from bdh_scale.data.tokenize.workers import TokenizerPool
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
    p.add_argument("--workers", type=int, default=1,
                   help="tokenizer processes (default 1; 0 tokenizes in this process)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard dir")
    return p.parse_args(argv)


def text_bytes(rows) -> int:
    return sum(len(r) if isinstance(r, bytes) else len(r.encode("utf-8")) for r in rows)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.shard_tokens < 1:
        fail(f"--shard-tokens: {args.shard_tokens} is not a positive integer")
    if args.workers < 0:
        fail(f"--workers: {args.workers} is negative; use 0 (this process) or more")
    if is_shard_dir(args.source):
        fail(f"--source: '{args.source}' is already a shard dir; give the text corpus instead")
    if os.path.exists(os.path.join(args.out, META_FILE)) and not args.overwrite:
        fail(f"--out: '{args.out}' already holds a shard dir; pass --overwrite to replace it")
    cfg = config_from_args(args, tokenizer=args.tokenizer)
    tokenizer = load_tokenizer(cfg.tokenizer)
    source = open_text_source(cfg, raw_bytes=isinstance(tokenizer, ByteTokenizer))
    total = (sum(os.path.getsize(f) for f in local_files(cfg.source))
             if looks_like_path(cfg.source) else None)
    sizes = []  # text bytes of the batches in flight, in order (the pool returns tokens only)

    def units():
        for rows in source.batches():
            if rows:
                sizes.append(text_bytes(rows))
                yield rows, source.documents

    writer = None
    n = 0
    with TokenizerPool(tokenizer, args.workers) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenize ({tokenizer.name})") as bar:
        for ids, lengths in pool.imap(units()):
            if writer is None:  # after the first batch: a bad source writes nothing
                writer = ShardWriter(args.out, tokenizer, args.shard_tokens, source=source.describe,
                                     fingerprint=source_fingerprint(cfg, source.revision), documents=source.documents)
            nbytes = sizes.pop(0)
            if cfg.max_tokens is not None and n + len(ids) > cfg.max_tokens:
                ids, lengths = cut(ids, lengths, cfg.max_tokens - n)
            writer.add(ids, text_bytes=nbytes, doc_lengths=lengths if source.documents else None)
            n += len(ids)
            bar.update(nbytes)
            bar.set_postfix(tokens=f"{n:,}")
            if cfg.max_tokens is not None and n >= cfg.max_tokens:
                break
    if n == 0:
        fail(f"--source: {source.describe} is empty (0 tokens); nothing written")
    meta = writer.close()
    print(f"wrote {meta['num_tokens']:,} tokens ({meta['dtype']}, vocab {meta['vocab_size']}) "
          f"in {len(meta['shards'])} shard(s)"
          + (f", {meta['documents']['num_docs']:,} documents" if meta["documents"] else "")
          + f" to {args.out}")
    return meta


def cut(ids, lengths, keep: int):
    """The first `keep` tokens, and the lengths of the documents that start among them."""
    ends = np.cumsum(lengths)
    n_docs = int(np.searchsorted(ends, keep, side="left")) + 1
    lengths = lengths[:n_docs].copy()
    lengths[-1] -= int(ends[n_docs - 1]) - keep
    return ids[:keep], lengths


if __name__ == "__main__":
    run(main)
