"""Data for BDH training: sources -> tokenizer -> token stream -> TBPTT lanes.

    from bdh_scale.data import DataConfig, build_data, seq_len_at

    data = build_data(cfg.data, batch_size=B, world_size=acc.num_processes,
                      rank=acc.process_index, seed=cfg.train.seed)
    for step in range(max_steps):
        T = seq_len_at(step, cfg.train.seq_len_schedule, default=cfg.train.seq_len)
        x, y, restarted = data.train.next_batch(T)   # (B, T), (B, T), (B,)
        # reset the carried state of lanes where restarted is True, then forward/backward
    ckpt["data"] = data.train.state_dict()           # exact resume: data.train.load_state_dict
    data.close()                                     # stops the prefetch thread

Under Accelerate each process builds its own lanes from its rank (see lanes.py); do not pass
them through accelerator.prepare. Bits per byte = loss_nats / ln 2 / data.bytes_per_token.

Module map: config.py (DataConfig), sources.py + hub.py (text via `datasets`), tokenizer.py,
shards.py (data_prep format), stream.py (numpy/memmap token stream), lanes.py, prefetch.py,
curriculum.py (seq_len_at), build.py (build_data, DataBundle), bench.py (bench_data).
"""

from bdh_scale.data.bench import bench_data
from bdh_scale.data.build import DataBundle, build_data
from bdh_scale.data.config import DataConfig
from bdh_scale.data.curriculum import seq_len_at, validate_schedule
from bdh_scale.data.errors import DataError
from bdh_scale.data.lanes import Lanes
from bdh_scale.data.prefetch import PrefetchLanes
from bdh_scale.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["DataConfig", "DataBundle", "DataError", "Lanes", "PrefetchLanes", "build_data",
           "bench_data", "seq_len_at", "validate_schedule", "load_tokenizer", "ByteTokenizer",
           "BPETokenizer"]
