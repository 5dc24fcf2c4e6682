"""build_data: a DataConfig in, a DataBundle (tokenizer, train lanes, val windows) out.

Which lanes (data.lanes, `lanes_kind`): stretch lanes for bundled corpora, shard dirs and local
files that fit, stream lanes for Hub datasets and large local files.

Stretch lanes, the story: resolve the source -> get one token stream (tokenize text rows, or
memmap a data_prep shard dir) -> hold out its last val_fraction as validation (nanoGPT split) ->
cut the train part into this rank's lanes -> optionally prefetch batches in a background thread.
Text sources are tokenized at start-up into an in-memory numpy array (uint8 for bytes, uint16
for BPE); every rank does this itself. For corpora that should not be re-tokenized per run or
do not fit in RAM, run `python -m data_prep.tokenize` once and point data.source at the shard
dir: it is memory-mapped and shared by all ranks through the page cache.

Stream lanes: open the source as a `datasets` stream -> read the held-out set (data.val_split or
the first documents, up to data.val_tokens; from the run directory's cache on resume) -> start
this rank's reader and tokenizer processes, which feed its lanes while training runs.

A mixture (data.sources, mixture.py) is the same story per source, its train parts interleaved by
weight into one stream: build_mixture (mixstretch.py, mixstream.py). Every source keeps its own
held-out set (DataBundle.by_source), for validation per source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from bdh_scale.data.badrecords import BadRecords
from bdh_scale.data.batch import Batch, make_batch
from bdh_scale.data.catalog import BUNDLED, local_files, looks_like_path
from bdh_scale.data.config import DataConfig
from bdh_scale.data.encode import encode_documents
from bdh_scale.data.heldout import HeldOut, save_held_out
from bdh_scale.data.lanes import Lanes
from bdh_scale.data.retry import use_recipe_retries
from bdh_scale.data.mqar import SOURCE as MQAR_SOURCE
from bdh_scale.data.shards import is_shard_dir
from bdh_scale.data.stream import TokenStream
from bdh_scale.data.tokenizer import ByteTokenizer, load_tokenizer, token_dtype
from bdh_scale.errors import DataError, DataFault

BYTES_PER_TOKEN_SAMPLE = 4_000_000  # val tokens decoded to measure bytes/token (BPE only)


@dataclass
class DataBundle:
    """Everything the training loop needs from the data side."""

    tokenizer: object          # ByteTokenizer | BPETokenizer (encode/decode/vocab_size/save)
    train: Lanes               # this rank's lanes (PrefetchLanes when data.prefetch > 0, StreamLanes)
    val: TokenStream           # the held-out tail of the stream, or a stream's held-out set
    bytes_per_token: float     # UTF-8 bytes per token over the val split (1.0 for bytes)
    source: str                # where the tokens came from, for logs
    n_tokens: int | None       # tokens in the whole stream (train + val); None for a stream
    doc_reset: bool = False    # data.doc_reset resolved: reset the state at document starts
    bad_records: int = 0       # stretch lanes: bad records skipped while reading the source (every rank alike)
    held_out: HeldOut | None = None  # stream lanes: the held-out set, to cache in the run dir
    score_answers: bool = False  # data.score: answers: only the answers the source marks are targets
    align: int = 1             # held-out rows begin at multiples of this (synthetic:mqar: one episode)
    # a mixture (data.sources): name -> (that source's held-out stream, its bytes per token); `val` is
    # then all of them one after the other, and held_out (stream lanes) name -> HeldOut
    by_source: dict = field(default_factory=dict)

    @property
    def val_key(self) -> str:
        """The setting that sizes the held-out data: stream lanes hold out data.val_tokens."""
        return "data.val_tokens" if self.held_out is not None else "data.val_fraction"

    def save_held_out(self, run_dir) -> None:
        """Stream lanes: keep the held-out set in the run directory (main process), so that a
        resumed run validates on, and holds out, exactly the same documents (a mixture: each
        source's in held_out/<name>)."""
        if isinstance(self.held_out, dict):
            for name, held in self.held_out.items():
                save_held_out(held, run_dir, name)
        elif self.held_out is not None:
            save_held_out(self.held_out, run_dir)

    def source_bundles(self) -> dict[str, "DataBundle"]:
        """A mixture: name -> this bundle validating on that source's held-out set alone ({} for one source)."""
        return {name: replace(self, val=val, bytes_per_token=bpt, by_source={})
                for name, (val, bpt) in self.by_source.items()}

    def val_layout(self, T: int, rows: int, max_batches: int | None = None) -> tuple[int, int, int]:
        """(rows, windows per row, tokens per row's stretch) that val_batches will read: fewer rows
        than asked when the held-out data is short, and at most what a row holds of windows."""
        n = len(self.val)
        if n < T + 1:
            raise DataError(f"{self.val_key}: the held-out data has {n:,} tokens, fewer than one "
                            f"window of T+1 = {T + 1}; raise {self.val_key} or lower T")
        if self.align == 1:
            rows = max(1, min(rows, n // (T + 1)))
            stretch = n // rows
            n_batches = (stretch - 1) // T
        else:  # rows of whole episodes: a row's last window reads the next row's first token as its last target
            rows = max(1, min(rows, (n - 1) // self.align))
            stretch = (n - 1) // rows // self.align * self.align
            n_batches = stretch // T
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        return rows, n_batches, stretch

    def val_batches(self, T: int, rows: int, max_batches: int | None = None) -> Iterator[Batch]:
        """Fixed held-out windows, identical on every call and on every rank.

        The val stream is laid out like the train lanes: min(rows, tokens // (T+1)) contiguous
        stretches, and batch k holds window k (tokens [k*T, k*T+T+1)) of every stretch. Batch
        k+1 therefore continues batch k row by row: the loop may reset the model state per
        batch (plain windows) or reset it once and carry it (as in training). Yields Batch
        (batch.py): restarted is True on the first batch only, doc_start where held-out
        documents begin.
        """
        rows, n_batches, stretch = self.val_layout(T, rows, max_batches)
        row_starts = np.arange(rows) * stretch
        for k in range(n_batches):
            starts = row_starts + k * T
            w = np.stack([self.val.read(s, s + T + 1) for s in starts])
            scored = self.val.scored_mask(starts, T + 1) if self.score_answers else None
            yield make_batch(w, k == 0, self.val.doc_mask(starts, T + 1), scored=scored)

    def close(self) -> None:
        """Stop the prefetch or reader thread and the tokenizer processes, if any."""
        self.train.close()


def tokenize_source(cfg: DataConfig, tokenizer) -> tuple[TokenStream, str, int]:
    """Tokenize a text source into one in-memory stream (capped at data.max_tokens); where each
    row starts is kept when the rows are documents. Also returns the description and the number of
    bad records skipped (data.on_bad_record=skip)."""
    from bdh_scale.data.sources import open_text_source

    src = open_text_source(cfg, raw_bytes=isinstance(tokenizer, ByteTokenizer))
    dtype = token_dtype(tokenizer.vocab_size)
    pieces, lengths, n = [], [], 0
    for rows in src.batches():
        if not rows:
            continue
        ids, lens = encode_documents(tokenizer, rows) if src.documents else \
            (tokenizer.encode_rows(rows).astype(dtype, copy=False), None)
        pieces.append(ids)
        lengths.append(lens)
        n += len(ids)
        if cfg.max_tokens is not None and n >= cfg.max_tokens:
            break
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
    doc_starts = None
    if src.documents:
        lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        doc_starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if len(lens) else lens
    if cfg.max_tokens is not None:
        tokens = tokens[:cfg.max_tokens]
        if doc_starts is not None:
            doc_starts = doc_starts[doc_starts < len(tokens)]
    return TokenStream([tokens], doc_starts), src.describe, src.bad_records.count if src.bad_records else 0


def resolve_doc_reset(cfg: DataConfig, has_documents: bool, describe: str) -> bool:
    """data.doc_reset: null means "where the source has documents"; true needs documents."""
    if cfg.doc_reset is None:
        return has_documents
    if cfg.doc_reset and not has_documents:
        raise DataError(f"data.doc_reset: {describe} has no document boundaries (text files and the "
                        "bundled corpora are one running text); set data.doc_reset=false or use a "
                        "jsonl/parquet/hub source")
    return cfg.doc_reset


def measure_bytes_per_token(tokenizer, stream: TokenStream) -> float:
    """UTF-8 bytes per token, decoding (up to a sample of) the stream in chunks."""
    if isinstance(tokenizer, ByteTokenizer) or len(stream) == 0:
        return 1.0
    n = min(len(stream), BYTES_PER_TOKEN_SAMPLE)
    chunk, total = 1 << 18, 0
    for a in range(0, n, chunk):
        ids = stream.read(a, min(n, a + chunk))
        total += len(tokenizer.decode(ids.tolist()).encode("utf-8"))
    return total / n


def load_stream(cfg: DataConfig):
    """(tokenizer, stream, description, bad records skipped) for any source kind."""
    from bdh_scale.data.shards import is_shard_dir, open_shards

    path = os.path.expanduser(cfg.source)
    if cfg.source.startswith("synthetic:"):
        return (*synthetic_stream(cfg), 0)
    if is_shard_dir(path):
        stream, tokenizer, _meta = open_shards(path, verify=cfg.verify_checksums,
                                               tokenizer_spec=cfg.tokenizer)
        if cfg.max_tokens is not None:
            stream = stream.view(0, cfg.max_tokens)
        return tokenizer, stream, f"shard dir '{cfg.source}'", 0
    tokenizer = load_tokenizer(cfg.tokenizer)
    return (tokenizer, *tokenize_source(cfg, tokenizer))


def lanes_kind(cfg: DataConfig) -> str:
    """"stretch" or "stream" for data.lanes (auto: streams for Hub sources, and for local files
    above data.stream_above_mb; stretch lanes for everything that is already tokens or small)."""
    fixed = (cfg.source in BUNDLED or is_shard_dir(os.path.expanduser(cfg.source))
             or cfg.source.startswith("synthetic:"))
    if cfg.lanes == "stream":
        if fixed:
            raise DataError(f"data.lanes: stream lanes read local .txt/.jsonl/.parquet files or a Hub dataset; "
                            f"'{cfg.source}' is a bundled corpus, a shard dir or a synthetic source: use "
                            "data.lanes=stretch (or auto)")
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
    if lanes_kind(cfg) == "stream":
        return build_stream(cfg, batch_size=batch_size, world_size=world_size, rank=rank, seq_len=seq_len,
                            held_out_dir=held_out_dir)
    if cfg.source == MQAR_SOURCE:
        return build_mqar(cfg, batch_size=batch_size, world_size=world_size, rank=rank, seq_len=seq_len,
                          windows_per_step=windows_per_step)
    tokenizer, stream, describe, skipped = load_stream(cfg)
    if len(stream) == 0:
        raise DataError(f"data.source: {describe} is empty (0 tokens); point data.source at a "
                        "corpus with text in it" + (f" (column '{cfg.text_column}')"
                                                    if cfg.text_column != "text" else ""))
    n_train = int(len(stream) * (1.0 - cfg.val_fraction))  # nanoGPT: data[:int(n*0.9)]
    train, val = stream.view(0, n_train), stream.view(n_train, len(stream))
    lanes = Lanes(train, batch_size, world_size, rank, seed=seed, pin_memory=cfg.pin_memory,
                  describe=f"the train split of {describe} ({1 - cfg.val_fraction:.0%} of "
                           f"{len(stream):,} tokens)", score_answers=cfg.score == "answers")
    if seq_len is not None:
        lanes.check_fits(seq_len)
    if cfg.prefetch > 0:
        from bdh_scale.data.prefetch import PrefetchLanes

        lanes = PrefetchLanes(lanes, depth=cfg.prefetch)
    bpt = measure_bytes_per_token(tokenizer, val if len(val) else train)
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val, bytes_per_token=bpt,
                      source=describe, n_tokens=len(stream),
                      doc_reset=resolve_doc_reset(cfg, stream.has_documents, describe),
                      score_answers=cfg.score == "answers", bad_records=skipped)


def build_mixture(cfg: DataConfig, *, batch_size: int, world_size: int, rank: int, seed: int,
                  seq_len: int | None, held_out_dir=None) -> DataBundle:
    """A mixture (data.sources): stream lanes over the interleaved `datasets` streams
    (mixstream.py), or stretch lanes over the interleaved token streams (mixstretch.py)."""
    from bdh_scale.data.mixture import mixture_lanes, parts

    mixed = parts(cfg)
    if mixture_lanes(cfg, mixed) == "stream":
        from bdh_scale.data.mixstream import build_mixed_stream

        return build_mixed_stream(cfg, mixed, batch_size=batch_size, world_size=world_size, rank=rank, seed=seed,
                                  seq_len=seq_len, held_out_dir=held_out_dir)
    from bdh_scale.data.mixstretch import build_mixed_stretch

    return build_mixed_stretch(cfg, mixed, batch_size=batch_size, world_size=world_size, rank=rank, seed=seed,
                               seq_len=seq_len)


def build_stream(cfg: DataConfig, *, batch_size: int, world_size: int, rank: int, seq_len: int | None,
                 held_out_dir=None) -> DataBundle:
    """Stream lanes over data.source (a Hub dataset or local files read through `datasets`)."""
    from bdh_scale.data.docstream import DocumentStream
    from bdh_scale.data.heldout import load_held_out, read_held_out
    from bdh_scale.data.sources import dataset_source
    from bdh_scale.data.streamlanes import StreamLanes
    from bdh_scale.data.workers import TokenizerPool

    tokenizer = load_tokenizer(cfg.tokenizer)
    raw = isinstance(tokenizer, ByteTokenizer)
    use_recipe_retries(cfg.read_retries, cfg.retry_wait_s)
    source = dataset_source(cfg, raw_bytes=raw)
    doc_reset = resolve_doc_reset(cfg, source.documents, source.describe)
    docs = DocumentStream(source, rank, world_size, retries=cfg.read_retries, retry_wait_s=cfg.retry_wait_s)
    pool = TokenizerPool(tokenizer, cfg.workers)
    try:
        held = load_held_out(held_out_dir, cfg, tokenizer) if held_out_dir is not None else None
        held = held or read_held_out(cfg, docs, tokenizer, pool)
        if seq_len is not None and len(held.tokens) < seq_len + 1:
            raise DataError(f"data.val_tokens: the held-out data of {source.describe} has {len(held.tokens):,} "
                            f"tokens, fewer than one window of T+1 = {seq_len + 1}; raise data.val_tokens, lower T, "
                            "or set data.val_split to a larger split")
    except DataFault as e:  # before step 1: the input is refused
        pool.close()
        raise DataError(str(e)) from None
    except BaseException:
        pool.close()
        raise

    def reopen(revision: str) -> DocumentStream:
        return replace(docs, source=dataset_source(cfg, raw, revision)).holding_out(held.digests, held.pieces)

    lanes = StreamLanes(docs.holding_out(held.digests, held.pieces), pool, batch_size, world_size=world_size,
                        rank=rank, buffer=cfg.stream_buffer, pin_memory=cfg.pin_memory, reopen=reopen,
                        bad_records=BadRecords(cfg.on_bad_record, cfg.max_bad_records))
    try:
        lanes.check_fits(seq_len or 1)
    except DataFault as e:  # before step 1: the input is refused, nothing was trained
        lanes.close()
        raise DataError(str(e)) from None
    except BaseException:
        lanes.close()
        raise
    val = held.stream
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val, bytes_per_token=measure_bytes_per_token(tokenizer, val),
                      source=f"{source.describe} (streamed, {world_size} x {batch_size} lanes)", n_tokens=None,
                      doc_reset=doc_reset, held_out=held)


FILLER_TOKENS = 2_000_000  # more than enough distinct filler for any gap


def filler_tokens(corpus: str, tokenizer) -> np.ndarray:
    """The first FILLER_TOKENS of a corpus tokenized with `tokenizer`: what synthetic episodes cut
    their filler from."""
    stream, _, _ = tokenize_source(DataConfig(source=corpus, max_tokens=FILLER_TOKENS, prefetch=0), tokenizer)
    return stream.read(0, len(stream))


def passkey_for(cfg: DataConfig, tokenizer):
    """The passkey episode builder of a data section (data/passkey.py): its settings, and filler
    cut from data.passkey.filler tokenized with `tokenizer`."""
    from bdh_scale.data.passkey import Passkey

    return Passkey(cfg.passkey, tokenizer, filler_tokens(cfg.passkey.filler, tokenizer))


def mqar_for(cfg: DataConfig, tokenizer, window: int | None):
    """The MQAR episode builder of a data section (data/mqar.py) for windows of data.mqar.window
    (or `window`, the run's T, when that is null)."""
    from bdh_scale.data.mqar import MQAR

    m = cfg.mqar
    T = m.window or window
    if T is None:
        raise DataError("data.mqar.window: null takes the run's train.seq_len, and none was given; set data.mqar.window")
    corpus = None if m.filler in ("constant", "random") else filler_tokens(m.filler, tokenizer)
    return MQAR(m, tokenizer.vocab_size, T, corpus)


def build_mqar(cfg: DataConfig, *, batch_size: int, world_size: int, rank: int, seq_len: int | None,
               windows_per_step: int) -> DataBundle:
    """MQAR lanes, generated as they are read, and a held-out set of episodes from their own seed."""
    from bdh_scale.data.mqar import SOURCE, MQARLanes

    tokenizer = load_tokenizer(cfg.tokenizer)
    mqar = mqar_for(cfg, tokenizer, seq_len)
    lanes = MQARLanes(mqar, batch_size, world_size, rank, windows_per_step=windows_per_step,
                      score_answers=cfg.score == "answers", pin_memory=cfg.pin_memory)
    if seq_len is not None:
        lanes.check_fits(seq_len)
    val = mqar.held_out()
    m = cfg.mqar
    gaps = (f"distances {m.gap[0]}-{m.gap[1]}" if not m.gap_schedule
            else f"distances by step {[list(e) for e in m.ranges()]}")
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val, bytes_per_token=measure_bytes_per_token(tokenizer, val),
                      source=f"'{SOURCE}' ({m.pairs} pairs, windows of {mqar.T}, {gaps} windows, filler {m.filler})",
                      n_tokens=None, doc_reset=resolve_doc_reset(cfg, True, SOURCE),
                      score_answers=cfg.score == "answers", align=(len(val) - 1) // m.val_episodes)


def synthetic_stream(cfg: DataConfig):
    """(tokenizer, stream, description) of a synthetic source held whole: every passkey episode,
    each a document, its answers marked."""
    from bdh_scale.data.passkey import SOURCE

    if cfg.source != SOURCE:
        raise DataError(f"data.source: '{cfg.source}' is not a synthetic source; the ones there are: "
                        f"{SOURCE}, synthetic:mqar")
    tokenizer = load_tokenizer(cfg.tokenizer)
    tokens, doc_starts, answers = passkey_for(cfg, tokenizer).stream()
    pk = cfg.passkey
    return (tokenizer, TokenStream([tokens.astype(token_dtype(tokenizer.vocab_size))], doc_starts, scored=answers),
            f"'{SOURCE}' ({pk.episodes} episodes, gaps {pk.min_gap}-{pk.max_gap} tokens, filler {pk.filler})")
