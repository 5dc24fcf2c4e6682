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
prefetch.py, translation.py (pair format), bpe.py (train a BPE), build.py (build_data, DataBundle).
"""

from bdh_scale.data.batch import Batch
from bdh_scale.data.build import DataBundle, build_data
from bdh_scale.data.config import DataConfig
from bdh_scale.errors import DataError
from bdh_scale.data.lanes import Lanes
from bdh_scale.data.prefetch import PrefetchLanes
from bdh_scale.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["Batch", "DataConfig", "DataBundle", "DataError", "Lanes", "PrefetchLanes", "build_data",
           "load_tokenizer", "ByteTokenizer", "BPETokenizer"]
