"""build_data: a DataConfig in, a DataBundle (tokenizer, train lanes, val windows) out.

What data.source names is a source kind (kinds.py): a synthetic source builds its own lanes; the
others give tokens, read by one of two kinds of lanes (data.lanes, lanes_kind): stretch lanes for
what is tokens already or fits (bundled corpora, shard dirs, local files up to
data.stream_above_mb), stream lanes for Hub datasets and large local files.

Stretch lanes, the story: the kind reads its tokens into one stream (tokenize text rows, or
memmap a data_prep shard dir) -> its last val_fraction is held out (nanoGPT split) -> the train
part is cut into this rank's lanes -> batches are prefetched in a background thread. Text is
tokenized at start-up by every rank; a corpus that should not be re-tokenized per run goes through
`python -m data_prep.tokenize` once and is memory-mapped, shared by all ranks through the page cache.

Stream lanes: open the source as a `datasets` stream -> read the held-out set (data.val_split or
the first documents, up to data.val_tokens; from the run directory's cache on resume) -> start
this rank's reader and tokenizer processes, which feed its lanes while training runs.

A mixture (data.sources, mixture/) is the same story per source, its train parts interleaved by
weight into one stream. Every source keeps its own held-out set (DataBundle.by_source).
"""

from __future__ import annotations

import os
from dataclasses import replace

from bdh_scale.data.bundle import DataBundle, measure_bytes_per_token, resolve_doc_reset
from bdh_scale.data.config import DataConfig
from bdh_scale.data.kinds import SourceKind, kind_of
from bdh_scale.data.lanes.stretch import StretchLanes
from bdh_scale.data.mixture.parts import Part, named, parts
from bdh_scale.data.sources.badrecords import BadRecords
from bdh_scale.data.sources.names import local_files, looks_like_path
from bdh_scale.data.sources.retry import use_recipe_retries
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer, load_tokenizer
from bdh_scale.errors import DataError


def lanes_kind(cfg: DataConfig, kind: SourceKind | None = None) -> str:
    """"stretch" or "stream" for data.lanes (auto: streams for Hub sources, and for local files
    above data.stream_above_mb; stretch lanes for everything that is already tokens or small)."""
    kind = kind or kind_of(cfg.source)
    fixed = not kind.streams
    if cfg.lanes == "stream":
        if fixed:
            raise DataError(f"data.lanes: stream lanes read local .txt/.jsonl/.parquet files or a Hub dataset; "
                            f"'{cfg.source}' is {kind.what}: use data.lanes=stretch (or auto)")
        if cfg.max_tokens is not None:
            raise DataError("data.max_tokens: it caps the in-memory stream of stretch lanes, and stream lanes "
                            "read the source as it comes; remove it, or set data.lanes=stretch")
        return "stream"
    if cfg.lanes == "stretch" or fixed or cfg.max_tokens is not None:
        return "stretch"
    if not looks_like_path(cfg.source):
        return "stream" if cfg.streaming else "stretch"
    size = sum(os.path.getsize(f) for f in local_files(cfg.source))
    return "stream" if size > cfg.stream_above_mb * 1e6 else "stretch"


def build_data(cfg: DataConfig, *, batch_size: int, world_size: int = 1, rank: int = 0,
               seed: int = 0, seq_len: int | None = None, held_out_dir=None,
               windows_per_step: int = 1) -> DataBundle:
    """Build this rank's data pipeline.

    batch_size: lanes per rank (B). world_size/rank: this process's place among W processes
    (under Accelerate: accelerator.num_processes / accelerator.process_index). seed: 0 keeps
    the natural layout (lane g reads stretch g of the stream); any other seed assigns the W*B
    stretches to lanes by a seeded permutation, identical on every rank (stream lanes read
    documents in corpus order whatever the seed). seq_len: if given, the corpus is checked to
    hold one window of seq_len+1 tokens per lane now rather than at the first batch (stream
    lanes: every lane is dealt its first document now). held_out_dir: a run directory whose
    cached held-out set a stream reuses (the run being resumed). windows_per_step: windows every
    lane reads per optimizer step (train.bptt_windows), for a curriculum counted in steps
    (data.mqar.gap_schedule).
    """
    if cfg.sources is not None:
        return build_mixture(cfg, batch_size=batch_size, world_size=world_size, rank=rank, seed=seed,
                             seq_len=seq_len, held_out_dir=held_out_dir)
    kind = kind_of(cfg.source)
    if kind.build is not None:  # a source with lanes of its own (synthetic:mqar generates them as they are read)
        return kind.build(cfg, batch_size=batch_size, world_size=world_size, rank=rank, seq_len=seq_len,
                          windows_per_step=windows_per_step)
    if lanes_kind(cfg, kind) == "stream":
        return build_stream(cfg, batch_size=batch_size, world_size=world_size, rank=rank, seq_len=seq_len,
                            held_out_dir=held_out_dir)
    tokenizer, stream, describe, skipped = kind.tokens(cfg)
    if len(stream) == 0:
        raise DataError(f"data.source: {describe} is empty (0 tokens); point data.source at a "
                        "corpus with text in it" + (f" (column '{cfg.text_column}')"
                                                    if cfg.text_column != "text" else ""))
    align = kind.align(cfg) if kind.align else 1  # episodes laid out in windows begin one (passkey's window)
    n_train = int(len(stream) * (1.0 - cfg.val_fraction)) // align * align  # nanoGPT: data[:int(n*0.9)]
    train, val = stream.view(0, n_train), stream.view(n_train, len(stream))
    lanes = StretchLanes(train, batch_size, world_size, rank, seed=seed, pin_memory=cfg.pin_memory,
                         describe=f"the train split of {describe} ({1 - cfg.val_fraction:.0%} of "
                                  f"{len(stream):,} tokens)", score_answers=cfg.score == "answers", align=align)
    if seq_len is not None:
        lanes.check_fits(seq_len)
    if cfg.prefetch > 0:
        from bdh_scale.data.lanes.prefetch import PrefetchLanes

        lanes = PrefetchLanes(lanes, depth=cfg.prefetch)
    bpt = measure_bytes_per_token(tokenizer, val if len(val) else train)
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val, bytes_per_token=bpt,
                      source=describe, n_tokens=len(stream),
                      doc_reset=resolve_doc_reset(cfg, stream.has_documents, describe),
                      score_answers=cfg.score == "answers", bad_records=skipped, align=align)


def build_mixture(cfg: DataConfig, *, batch_size: int, world_size: int, rank: int, seed: int,
                  seq_len: int | None, held_out_dir=None) -> DataBundle:
    """A mixture (data.sources): stream lanes over the interleaved `datasets` streams
    (mixstream.py), or stretch lanes over the interleaved token streams (mixstretch.py)."""
    mixed = parts(cfg)
    if mixture_lanes(cfg, mixed) == "stream":
        from bdh_scale.data.mixture.stream import build_mixed_stream

        return build_mixed_stream(cfg, mixed, batch_size=batch_size, world_size=world_size, rank=rank, seed=seed,
                                  seq_len=seq_len, held_out_dir=held_out_dir)
    from bdh_scale.data.mixture.stretch import build_mixed_stretch

    return build_mixed_stretch(cfg, mixed, batch_size=batch_size, world_size=world_size, rank=rank, seed=seed,
                               seq_len=seq_len)


def mixture_lanes(cfg, mixed: list[Part]) -> str:
    """"stretch" or "stream" for the whole mixture: data.lanes, or with auto, stream lanes where a source
    would be streamed alone (a Hub dataset, large files) and all can be; a mixture of one of those with a
    bundled corpus or a shard dir is refused rather than read whole into memory."""
    kinds = {}
    for p in mixed:  # an impossible data.lanes, or a source that is not there, is refused here
        with named(p):
            kinds[p.name] = lanes_kind(p.cfg)
    if cfg.lanes != "auto" or "stream" not in kinds.values():
        return cfg.lanes if cfg.lanes != "auto" else "stretch"
    held = [p for p in mixed if not kind_of(p.cfg.source).streams or p.cfg.max_tokens is not None]
    if held:
        streamed = next(name for name, kind in kinds.items() if kind == "stream")
        raise DataError(f"data.sources: '{streamed}' is streamed (a Hub dataset or large files) and '{held[0].name}' "
                        "is held whole (a bundled corpus, a shard dir, or max_tokens); mix sources of one kind, or set "
                        "data.lanes=stretch to read them all into memory (with max_tokens on the large ones)")
    return "stream"


def build_stream(cfg: DataConfig, *, batch_size: int, world_size: int, rank: int, seq_len: int | None,
                 held_out_dir=None) -> DataBundle:
    """Stream lanes over data.source (a Hub dataset or local files read through `datasets`)."""
    from bdh_scale.data.lanes.heldout import load_held_out, read_held_out
    from bdh_scale.data.lanes.stream import StreamLanes, before_step_one
    from bdh_scale.data.sources.reader import dataset_source
    from bdh_scale.data.sources.units import DocumentStream
    from bdh_scale.data.tokenize.workers import TokenizerPool

    tokenizer = load_tokenizer(cfg.tokenizer)
    raw = isinstance(tokenizer, ByteTokenizer)
    use_recipe_retries(cfg.read_retries, cfg.retry_wait_s)
    source = dataset_source(cfg, raw_bytes=raw)
    doc_reset = resolve_doc_reset(cfg, source.documents, source.describe)
    docs = DocumentStream(source, rank, world_size, retries=cfg.read_retries, retry_wait_s=cfg.retry_wait_s)
    pool = TokenizerPool(tokenizer, cfg.workers)
    with before_step_one(pool):
        held = load_held_out(held_out_dir, cfg, tokenizer) if held_out_dir is not None else None
        held = held or read_held_out(cfg, docs, tokenizer, pool)
        if seq_len is not None and len(held.tokens) < seq_len + 1:
            raise DataError(f"data.val_tokens: the held-out data of {source.describe} has {len(held.tokens):,} "
                            f"tokens, fewer than one window of T+1 = {seq_len + 1}; raise data.val_tokens, lower T, "
                            "or set data.val_split to a larger split")

    def reopen(revision: str) -> DocumentStream:
        return replace(docs, source=dataset_source(cfg, raw, revision)).holding_out(held.digests, held.pieces)

    lanes = StreamLanes(docs.holding_out(held.digests, held.pieces), pool, batch_size, world_size=world_size,
                        rank=rank, buffer=cfg.stream_buffer, pin_memory=cfg.pin_memory, reopen=reopen,
                        bad_records=BadRecords(cfg.on_bad_record, cfg.max_bad_records))
    with before_step_one(lanes):
        lanes.check_fits(seq_len or 1)
    val = held.stream
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val, bytes_per_token=measure_bytes_per_token(tokenizer, val),
                      source=f"{source.describe} (streamed, {world_size} x {batch_size} lanes)", n_tokens=None,
                      doc_reset=doc_reset, held_out=held)
