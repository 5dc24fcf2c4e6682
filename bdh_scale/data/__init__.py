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

Under Accelerate each process builds its own lanes from its rank (lanes/stretch.py); do not pass
them through accelerator.prepare. Bits per byte = loss_nats / ln 2 / data.bytes_per_token.

The data path, by stage:

    config.py      the data section of a recipe (DataConfig)
    kinds.py       what data.source can name: the kinds of source, tried in order (one line each)
    sources/       where tokens come from: bundled corpora, local and remote files, the Hub, shard dirs;
                   reading rows and records, bad records, network retries
    synthetic/     sources that generate their episodes: passkey, MQAR
    tokenize/      tokenizers (bytes, BPE), encoding documents, the tokenizer worker processes
    lanes/         the Lanes the loop reads: stretch lanes, stream lanes, held-out sets, prefetch
    mixture/       data.sources: weighted mixtures of corpora
    build.py       build_data: a data section in, a DataBundle out (bundle.py)
    batch.py       Batch: x, y, restarted, doc_start
"""

import importlib

# Exported names are imported on first use, so that a tokenizer worker process (workers.py),
# which imports bdh_scale.data.tokenize.workers, loads numpy and the tokenizer but not torch.
_EXPORTS = {"Batch": "batch", "DataBundle": "bundle", "build_data": "build", "DataConfig": "config",
            "DataError": "bdh_scale.errors", "Lanes": "lanes", "StretchLanes": "lanes.stretch",
            "PrefetchLanes": "lanes.prefetch", "load_tokenizer": "tokenize.tokenizer",
            "ByteTokenizer": "tokenize.tokenizer", "BPETokenizer": "tokenize.tokenizer"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bdh_scale.data' has no attribute '{name}'")
    module = _EXPORTS[name]
    return getattr(importlib.import_module(module if module.startswith("bdh_scale.") else f"{__name__}.{module}"), name)
