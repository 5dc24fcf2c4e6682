"""Where text comes from: bundled samples, local files, or the Hugging Face Hub, all through
`datasets`.

`open_text_source(cfg, raw_bytes)` returns a TextSource whose `batches()` yields lists of rows
in corpus order; the caller tokenizes them (see build.py). Rows are str, except text files read
with raw_bytes=True (for the byte tokenizer), whose rows are the files' exact bytes.
Pre-tokenized data_prep shard dirs skip this module entirely (shards.py).

Local files use datasets' packaged builders with streaming=True (no Arrow cache is written):
  .txt/.text -> "text", one row per line with its line break kept, so the rows concatenate back
               to the file. Arrow strings must be valid UTF-8, so for the byte tokenizer the
               files are decoded as latin-1 (one code point per byte, lossless) and turned back
               into the original bytes: invalid UTF-8 reaches the byte tokenizer unchanged.
               Otherwise they are decoded as UTF-8 with errors="replace" (U+FFFD). The builder
               opens files in text mode, which turns "\\r\\n" and "\\r" line endings into "\\n".
  .jsonl/.json -> "json", .parquet -> "parquet": one row per record, data.text_column read and
               data.doc_separator appended after each row so documents do not run together.
               Each row is a document (TextSource.documents): its first token is flagged to the
               loop (batch.py doc_start).
               A column of translation dicts (data.translation) is rendered as pair text
               instead, with no separator: the same stream as the bundled europarl_en_fr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import zip_longest
from typing import Callable, Iterator

import numpy as np

from bdh_scale.data.config import DataConfig
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.sources import SourceKind, hub
from bdh_scale.data.sources.badrecords import BadRecords
from bdh_scale.data.sources.dataset_rows import ROWS_PER_BATCH, rows_of, text_file_dataset
from bdh_scale.data.sources.hub import hub_rows, open_hub_dataset
from bdh_scale.data.sources.names import (BUNDLED, BUNDLED_DIR, builder_for, data_files, is_remote, local_files,
                                          looks_like_path, names_files)
from bdh_scale.data.sources.record_files import check_first_records, record_dataset, record_rows
from bdh_scale.data.sources.translation import format_pairs
from bdh_scale.data.tokenize.encode import encode_documents
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer, load_tokenizer, token_dtype
from bdh_scale.errors import DataError, DataFailedMidRun


@dataclass
class TextSource:
    describe: str                                # human-readable origin, used in messages
    reads: Callable[[], Iterator[tuple[list, list]]]  # fresh iterator of (rows, bad records), corpus order
    documents: bool = False                      # every row is a document (jsonl/parquet/Hub text rows)
    revision: str | None = None                  # a streamed Hub dataset: the commit every batches() reads
    bad_records: BadRecords | None = None        # data.on_bad_record, and the records batches() skipped

    def batches(self) -> Iterator[list]:
        """Fresh iterator of row batches, data.on_bad_record applied as before a run trains: a bad
        record under stop, or one past data.max_bad_records, is a DataError (nothing trained yet)."""
        policy = self.bad_records or BadRecords("stop", 0)
        for rows, bad in self.reads():
            try:
                policy.meet(bad)
            except DataFailedMidRun as e:
                raise DataError(str(e)) from None
            if (fault := policy.past_cap(policy.count)) is not None:
                raise DataError(str(fault))
            yield rows


@dataclass
class DatasetSource:
    """A source read through a `datasets` IterableDataset: what stream lanes split across ranks
    (datasets.distributed) and resume (IterableDataset.state_dict)."""

    describe: str
    documents: bool                               # every row is a document
    open: Callable[[str | None], object]          # split (None: the train split) -> IterableDataset
    rows: Callable[[object, int], Iterator[tuple[list, list]]]  # (dataset, rows per batch) -> (rows, bad records)
    revision: str | None = None                   # the Hub commit read; None for files
    files: tuple = ()                             # the files read, in order (none for a Hub dataset)
    kind: str = "records"                         # what open() gives: text (lines), records (records.py), hub


def dataset_source(cfg: DataConfig, raw_bytes: bool = False, revision: str | None = None) -> DatasetSource:
    """data.source as a DatasetSource: local or remote .txt/.jsonl/.json/.parquet files (records.py
    reads the records of jsonl/json/parquet) or a Hub dataset (at `revision`, else the commit the
    Hub serves now). Bundled corpora and shard dirs are not datasets streams: DataError."""
    source = cfg.source
    if source in BUNDLED:
        raise DataError(f"data.lanes: stream lanes read local .txt/.jsonl/.parquet files or a Hub dataset; "
                        f"'{source}' is a bundled corpus: use data.lanes=stretch (or auto)")
    if not names_files(source):
        commit = revision or hub.hub_commit(cfg)
        return DatasetSource(f"hub dataset '{source}'@{commit[:10]}", rows_are_documents(cfg),
                             lambda split: open_hub_dataset(cfg, split, commit),
                             lambda ds, n: hub_rows(cfg, ds, n), revision=commit, kind="hub")
    if cfg.load_kwargs:
        raise DataError(f"data.load_kwargs: {cfg.load_kwargs} are arguments of datasets.load_dataset for a Hub "
                        f"dataset; the files '{source}' names take none: remove data.load_kwargs")
    files = data_files(source)
    builder = builder_for(files, source)
    describe = f"'{source}'"

    def open_files(split):
        if split not in (None, "train"):
            raise DataError(f"data.val_split: local or remote files have one split, 'train'; '{split}' does not exist. "
                            "Set data.val_split=null (the first documents are held out) or use a Hub dataset")
        return text_file_dataset(files, raw_bytes) if builder == "text" else \
            record_dataset(files, cfg.text_column, cfg.translation)

    if builder == "text":
        def rows(ds, n):
            return rows_of(ds, cfg, describe, "text", "", latin1_bytes=raw_bytes, batch_size=n)
        return DatasetSource(describe, False, open_files, rows, files=tuple(files), kind="text")
    check_first_records(files[0], cfg.text_column, cfg.translation, describe)
    separator = "" if cfg.translation else cfg.doc_separator  # pairs end with their own newline
    return DatasetSource(describe, rows_are_documents(cfg), open_files,
                         lambda ds, n: record_rows(ds, separator, n), files=tuple(files))


def parallel_text(src_path, tgt_path, langs=("fr", "en"),
                  counts: dict | None = None) -> Iterator[list[str]]:
    """Two line-aligned files (Europarl release layout: line i of one translates line i of the
    other) as batches of "<FR:...>\\n<EN:...>\\n" pair text (translation.py); `langs` names the
    languages of the first and second file. `counts`, if given, receives "lines" (aligned
    lines read) and "pairs" (pairs kept, i.e. both sides non-empty)."""
    for path in (src_path, tgt_path):
        if not os.path.isfile(path):
            raise DataError(f"data.source: no such file: '{path}'")
    src = text_file_dataset([src_path]).iter(batch_size=ROWS_PER_BATCH)
    tgt = text_file_dataset([tgt_path]).iter(batch_size=ROWS_PER_BATCH)
    n_src = n_tgt = 0
    for bs, bt in zip_longest(src, tgt):
        n_src += len(bs["text"]) if bs else 0
        n_tgt += len(bt["text"]) if bt else 0
        if bs is None or bt is None or len(bs["text"]) != len(bt["text"]):
            n_src += sum(len(b["text"]) for b in src)
            n_tgt += sum(len(b["text"]) for b in tgt)
            raise DataError(f"data.source: '{src_path}' has {n_src} lines but '{tgt_path}' has "
                            f"{n_tgt}; the two sides of a parallel corpus must be line-aligned")
        texts = list(format_pairs(langs[0], langs[1], zip(bs["text"], bt["text"])))
        if counts is not None:
            counts["lines"] = n_src
            counts["pairs"] = counts.get("pairs", 0) + len(texts)
        yield texts


def open_text_source(cfg: DataConfig, raw_bytes: bool = False) -> TextSource:
    """Resolve data.source (not a shard dir) to a TextSource; raw_bytes: text files yield
    their exact bytes (for the byte tokenizer)."""
    source = cfg.source

    def lines_of(files, describe):
        return lambda: rows_of(text_file_dataset(files, raw_bytes), cfg, describe, "text", "",
                               latin1_bytes=raw_bytes)

    if source == "tinyshakespeare":
        path = BUNDLED_DIR / "tinyshakespeare" / "input.txt"
        return TextSource("bundled 'tinyshakespeare'", lines_of([path], "tinyshakespeare"))
    if source in ("europarl_en", "europarl_fr"):  # one side of the pair corpus, e.g. to mix the two (data.sources)
        path = BUNDLED_DIR / "europarl" / "fr-en" / f"{source[-2:]}.txt"
        return TextSource(f"bundled '{source}'", lines_of([path], source))
    if source == "europarl_en_fr":
        d = BUNDLED_DIR / "europarl" / "fr-en"
        return TextSource("bundled 'europarl_en_fr'",
                          lambda: ((rows, []) for rows in parallel_text(d / "fr.txt", d / "en.txt")))
    policy = BadRecords(cfg.on_bad_record, cfg.max_bad_records)
    if names_files(source):
        files = dataset_source(cfg, raw_bytes)
        return TextSource(files.describe, lambda: files.rows(files.open(None), ROWS_PER_BATCH), files.documents,
                          bad_records=policy)
    # one request: every read, and the fingerprint data_prep records, are of the same commit
    revision = hub.hub_commit(cfg) if cfg.streaming else None
    return TextSource(f"hub dataset '{source}'", lambda: hub_rows(cfg, open_hub_dataset(cfg, revision=revision)),
                      documents=rows_are_documents(cfg), revision=revision, bad_records=policy)


def rows_are_documents(cfg: DataConfig) -> bool:
    """Rows of jsonl/parquet/Hub data are documents, except translation pairs: those are the
    consecutive sentences of one text, like the bundled europarl_en_fr, which has none."""
    return cfg.translation is None


def source_fingerprint(cfg: DataConfig, revision: str | None = None) -> dict:
    """What identifies the source's content, for meta.json: bundled files by content, local
    files by name, size and modification time (a changed, added or removed file changes it),
    a Hub dataset by its commit (`revision` when the source already resolved it; None when the Hub
    cannot say)."""
    import hashlib

    if cfg.source in BUNDLED:
        root = BUNDLED_DIR / BUNDLED[cfg.source].split("/")[0]
        files = sorted(f for f in root.rglob("*.txt") if f.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        return {"kind": "bundled", "name": cfg.source, "sha256": h.hexdigest()}
    if is_remote(cfg.source):  # what a host serves can change under the same names: the names are all there is
        files = data_files(cfg.source)
        return {"kind": "remote", "files": len(files), "sha256": hashlib.sha256("\n".join(files).encode()).hexdigest()}
    if looks_like_path(cfg.source):
        files = local_files(cfg.source)
        h = hashlib.sha256()
        for f in files:
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"kind": "local", "files": len(files), "bytes": sum(os.path.getsize(f) for f in files),
                "sha256": h.hexdigest()}
    return {"kind": "hub", "name": cfg.source, "config": cfg.hub_config, "split": cfg.hub_split,
            "revision": revision or hub.hub_commit(cfg)}


def tokenize_source(cfg: DataConfig, tokenizer) -> tuple[TokenStream, str, int]:
    """Tokenize a text source into one in-memory stream (capped at data.max_tokens); where each
    row starts is kept when the rows are documents. Also returns the description and the number of
    bad records skipped (data.on_bad_record=skip)."""
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


FILLER_TOKENS = 2_000_000  # more than enough distinct filler for any gap


def filler_tokens(corpus: str, tokenizer) -> np.ndarray:
    """The first FILLER_TOKENS of a corpus tokenized with `tokenizer`: what synthetic episodes cut
    their filler from."""
    stream, _, _ = tokenize_source(DataConfig(source=corpus, max_tokens=FILLER_TOKENS, prefetch=0), tokenizer)
    return stream.read(0, len(stream))


def text_tokens(cfg):
    """(tokenizer, stream, description, bad records) of a text source, tokenized whole."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    return (tokenizer, *tokenize_source(cfg, tokenizer))


BUNDLED_KIND = SourceKind("bundled", "a bundled corpus", claims=lambda source: source in BUNDLED, tokens=text_tokens)
FILES_KIND = SourceKind("files", "local or remote files", claims=lambda source: looks_like_path(source) or is_remote(source),
                        tokens=text_tokens, streams=True)
HUB_KIND = SourceKind("hub", "a Hugging Face Hub dataset", claims=lambda source: True, tokens=text_tokens, streams=True)
