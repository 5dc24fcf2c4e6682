"""bench_data: how fast the data pipeline builds and serves tokens (no model involved).

The number that matters for training is `serve_tokens_per_s` (tokens handed to the loop per
second of waiting for next_batch); `build_tokens_per_s` is the one-off start-up cost of
tokenizing a text source (near-free for a data_prep shard dir, which is only memory-mapped).
"""

from __future__ import annotations

import dataclasses
import time

from bdh_scale.data.build import build_data
from bdh_scale.data.config import DataConfig


def bench_data(cfg: DataConfig, T: int, B: int, steps: int) -> dict:
    """Build `cfg` for one rank with B lanes, draw `steps` batches of T; report throughput."""
    t0 = time.perf_counter()
    data = build_data(cfg, batch_size=B, seq_len=T)
    build_s = time.perf_counter() - t0
    try:
        data.train.next_batch(T)  # warm-up: starts the prefetch thread
        t0 = time.perf_counter()
        for _ in range(steps):
            data.train.next_batch(T)
        serve_s = time.perf_counter() - t0
    finally:
        data.close()
    served = steps * B * T
    return {"source": data.source, "tokenizer": data.tokenizer.name,
            "vocab_size": data.tokenizer.vocab_size, "n_tokens": data.n_tokens,
            "T": T, "B": B, "steps": steps, "prefetch": cfg.prefetch,
            "build_s": round(build_s, 4),
            "build_tokens_per_s": data.n_tokens / build_s if build_s > 0 else float("inf"),
            "serve_s": round(serve_s, 4),
            "serve_tokens_per_s": served / serve_s if serve_s > 0 else float("inf"),
            "bytes_per_token": data.bytes_per_token,
            "config": dataclasses.asdict(cfg)}
