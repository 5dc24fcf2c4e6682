"""Data for BDH training: sources -> tokenizer -> token stream -> TBPTT lanes.

    from bdh_scale.data import DataConfig, build_data

    data = build_data(cfg.data, batch_size=B, world_size=acc.num_processes,
                      rank=acc.process_index, seed=cfg.train.seed)
    for step in range(max_steps):
        batch = data.train.next_batch(T)   # Batch: x, y (B, T), restarted (B,), doc_start (B, T)
        # reset the carried state of lanes where restarted is True (and, with data.doc_reset,
        # before every token where doc_start is True), then forward/backward; T may change per step
    ckpt["data"] = data.train.state_dict()           # exact resume: data.train.load_state_dict
    data.close()                                     # stops the prefetch thread

Under Accelerate each process builds its own lanes from its rank (see lanes.py); do not pass
them through accelerator.prepare. Bits per byte = loss_nats / ln 2 / data.bytes_per_token.

Module map: config.py (DataConfig), sources.py + hub.py (text via `datasets`), tokenizer.py,
encode.py (rows -> documents' tokens, tokenizer hash), shards.py (data_prep format), stream.py
(numpy/memmap token stream with document starts), batch.py (Batch), lanes.py (stretch lanes),
prefetch.py, feeder.py (the background thread of both), translation.py (pair format), bpe.py
(train a BPE), build.py (build_data, DataBundle). Stream lanes: docstream.py (a rank's share of a
`datasets` stream, resumable), workers.py (tokenizer processes), heldout.py, streamlanes.py.
"""

import importlib

# Exported names are imported on first use, so that a tokenizer worker process (workers.py),
# which imports bdh_scale.data.workers, loads numpy and the tokenizer but not torch.
_EXPORTS = {"Batch": "batch", "DataBundle": "build", "build_data": "build", "DataConfig": "config",
            "DataError": "bdh_scale.errors", "Lanes": "lanes", "PrefetchLanes": "prefetch",
            "load_tokenizer": "tokenizer", "ByteTokenizer": "tokenizer", "BPETokenizer": "tokenizer"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bdh_scale.data' has no attribute '{name}'")
    module = _EXPORTS[name]
    return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
