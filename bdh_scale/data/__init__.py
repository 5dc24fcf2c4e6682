"""Data for BDH training: sources -> tokenizer -> token stream -> TBPTT lanes.

    from bdh_scale.data import DataConfig, build_data

    data = build_data(cfg.data, batch_size=B, world_size=acc.num_processes,
                      rank=acc.process_index, seed=cfg.train.seed)
    for step in range(max_steps):
        x, y, restarted = data.train.next_batch(T)   # (B, T), (B, T), (B,); T may change per step
        # reset the carried state of lanes where restarted is True, then forward/backward
    ckpt["data"] = data.train.state_dict()           # exact resume: data.train.load_state_dict
    data.close()                                     # stops the prefetch thread

Under Accelerate each process builds its own lanes from its rank (see lanes.py); do not pass
them through accelerator.prepare. Bits per byte = loss_nats / ln 2 / data.bytes_per_token.

Module map: config.py (DataConfig), sources.py + hub.py (text via `datasets`), tokenizer.py,
shards.py (data_prep format), stream.py (numpy/memmap token stream), lanes.py, prefetch.py,
translation.py (pair format), bpe.py (train a BPE), build.py (build_data, DataBundle).
"""

from bdh_scale.data.build import DataBundle, build_data
from bdh_scale.data.config import DataConfig
from bdh_scale.errors import DataError
from bdh_scale.data.lanes import Lanes
from bdh_scale.data.prefetch import PrefetchLanes
from bdh_scale.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["DataConfig", "DataBundle", "DataError", "Lanes", "PrefetchLanes", "build_data",
           "load_tokenizer", "ByteTokenizer", "BPETokenizer"]
