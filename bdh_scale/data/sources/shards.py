"""Pre-tokenized shard dirs: the on-disk format written by `python -m data_prep.tokenize`.

    <dir>/meta.json        what is in here (below)
    <dir>/tokenizer.json   the tokenizer the ids were made with (load_tokenizer reads it)
    <dir>/tokens_000000.bin, ...   raw little-endian token ids, dtype from meta.json
    <dir>/doc_starts.bin   the document index: where each document starts, as little-endian
                           int64 token offsets into the whole stream, ascending (sources made of
                           documents only: rows of jsonl/parquet/Hub data)

meta.json: {"format": "bdh_scale.shards", "version": 2, "source": str, "source_fingerprint":
{...} (catalog.py: files, sizes and times, or the Hub revision), "tokenizer": name,
"tokenizer_sha256": hex (encode.py tokenizer_hash), "vocab_size": int, "dtype":
"uint8"|"uint16"|"uint32", "num_tokens": int, "text_bytes": int, "shards": [{"file": str,
"num_tokens": int, "sha256": hex}, ...], "documents": {"file": "doc_starts.bin", "num_docs":
int, "sha256": hex} or null}. Version 1 dirs (no fingerprint, hash or document index) still open.

Shards and the document index are read as np.memmap (nothing is loaded up front); the stream is
the shards' concatenation in listed order. The sha256 of every file is checked on open
(data.verify_checksums), so a truncated or corrupted file is refused with its name rather than
silently training on garbage, and a tokenizer.json that is not the one the ids were made with
(or a data.tokenizer other than it) is refused by its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.sources import SourceKind
from bdh_scale.data.tokenize.encode import tokenizer_hash
from bdh_scale.data.tokenize.tokenizer import load_tokenizer, token_dtype
from bdh_scale.errors import DataError
from bdh_scale.utils.bounded import read_json

META_FILE = "meta.json"
MAX_META_BYTES = 64 << 20  # one entry per shard: a corpus of 100k shards is ~20 MB
DOC_INDEX = "doc_starts.bin"
DOC_DTYPE = np.dtype("<i8")
FORMAT = "bdh_scale.shards"
VERSION = 2


def is_shard_dir(path) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def sha256_of(path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Append token arrays (with their documents' lengths for a source of documents); rolls over
    to a new .bin file every `shard_tokens` tokens and hashes each file as it is written.
    close() writes tokenizer.json and meta.json, last, so a dir without meta.json is unfinished."""

    def __init__(self, out_dir, tokenizer, shard_tokens: int = 100_000_000, source: str = "",
                 fingerprint: dict | None = None, documents: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer, self.source, self.fingerprint = tokenizer, source, fingerprint or {}
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.text_bytes = 0
        self.num_tokens = 0
        self._file = self._hash = None
        self._in_shard = 0
        self._docs = open(self.dir / DOC_INDEX, "wb") if documents else None
        self._docs_hash, self._num_docs = hashlib.sha256(), 0

    def add(self, ids: np.ndarray, text_bytes: int = 0, doc_lengths: np.ndarray | None = None) -> None:
        """Append ids; doc_lengths (a source of documents): the token count of each document
        in ids, in order (they sum to len(ids))."""
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        self.text_bytes += text_bytes
        if self._docs is not None and doc_lengths is not None and len(doc_lengths):
            starts = self.num_tokens + np.concatenate([[0], np.cumsum(doc_lengths)[:-1]])
            block = starts.astype(DOC_DTYPE).tobytes()
            self._docs.write(block)
            self._docs_hash.update(block)
            self._num_docs += len(starts)
        self.num_tokens += len(ids)
        while len(ids):
            if self._file is None:
                self._open_next()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            block = ids[:take].astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
            self._file.write(block)
            self._hash.update(block)
            self._in_shard += take
            ids = ids[take:]
            if self._in_shard == self.shard_tokens:
                self._close_current()

    def _open_next(self) -> None:
        name = f"tokens_{len(self.shards):06d}.bin"
        self._file, self._hash, self._in_shard = open(self.dir / name, "wb"), hashlib.sha256(), 0
        self.shards.append({"file": name, "num_tokens": 0, "sha256": ""})

    def _close_current(self) -> None:
        self._file.close()
        self.shards[-1].update(num_tokens=self._in_shard, sha256=self._hash.hexdigest())
        self._file = None

    def close(self) -> dict:
        if self._file is not None:
            self._close_current()
        documents = None
        if self._docs is not None:
            self._docs.close()
            documents = {"file": DOC_INDEX, "num_docs": self._num_docs, "sha256": self._docs_hash.hexdigest()}
        self.tokenizer.save(self.dir)
        meta = {"format": FORMAT, "version": VERSION, "source": self.source,
                "source_fingerprint": self.fingerprint, "tokenizer": self.tokenizer.name,
                "tokenizer_sha256": tokenizer_hash(self.tokenizer), "vocab_size": self.tokenizer.vocab_size,
                "dtype": self.dtype.name, "num_tokens": sum(s["num_tokens"] for s in self.shards),
                "text_bytes": self.text_bytes, "shards": self.shards, "documents": documents}
        (self.dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return meta


def read_meta(path) -> dict:
    meta_path = Path(path) / META_FILE
    try:
        meta = read_json(meta_path, MAX_META_BYTES, DataError, "shard metadata")
    except DataError as e:
        raise DataError(f"data.source: {e}; re-run `python -m data_prep.tokenize`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"data.source: '{meta_path}' is not a bdh_scale shard index "
                        f"(format {meta.get('format')!r}); re-run `python -m data_prep.tokenize`")
    return meta


def open_shards(path, verify: bool = True, tokenizer_spec: str = "bytes"):
    """(TokenStream over memmapped shards, with the document index if any, tokenizer, meta).

    The shard dir's own tokenizer is used; it must be the one the ids were made with (its hash
    in meta.json). `tokenizer_spec` (data.tokenizer) is "bytes" (the default, meaning "whatever
    the shards were made with") or a tokenizer that must be the same as the shards' one.
    """
    meta = read_meta(path)
    tokenizer = load_tokenizer(path)
    own = tokenizer_hash(tokenizer)
    if meta.get("tokenizer_sha256", own) != own:
        raise DataError(f"data.source: '{path}/tokenizer.json' is not the tokenizer the shards were "
                        f"made with (its sha256 differs from meta.json's); restore it or re-run "
                        "`python -m data_prep.tokenize`")
    if tokenizer_spec != "bytes" and tokenizer_hash(load_tokenizer(tokenizer_spec)) != own:
        raise DataError(f"data.tokenizer: '{tokenizer_spec}' differs from the tokenizer the "
                        f"shards in '{path}' were made with ({tokenizer.name}); set "
                        f"data.tokenizer to 'bytes' (use the shards' own) or re-tokenize")
    if meta["vocab_size"] != tokenizer.vocab_size:
        raise DataError(f"data.source: '{path}/tokenizer.json' has vocab "
                        f"{tokenizer.vocab_size} but meta.json says {meta['vocab_size']}")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    pieces = []
    for shard in meta["shards"]:
        file = _checked(path, shard["file"], shard["num_tokens"] * dtype.itemsize, shard["sha256"], verify)
        if shard["num_tokens"]:
            pieces.append(np.memmap(file, dtype=dtype, mode="r"))
    doc_starts = None
    documents = meta.get("documents")
    if documents is not None:
        file = _checked(path, documents["file"], documents["num_docs"] * DOC_DTYPE.itemsize,
                        documents["sha256"], verify)
        doc_starts = (np.memmap(file, dtype=DOC_DTYPE, mode="r") if documents["num_docs"]
                      else np.zeros(0, DOC_DTYPE))
    return TokenStream(pieces, doc_starts), tokenizer, meta


def _checked(path, name: str, size: int, sha256: str, verify: bool) -> Path:
    """The file `name` of a shard dir, after checking its size (and sha256 when verify)."""
    file = Path(path) / name
    if not file.is_file():
        raise DataError(f"data.source: shard '{file}' listed in meta.json is missing")
    if file.stat().st_size != size:
        raise DataError(f"data.source: shard '{file}' has {file.stat().st_size} bytes, "
                        f"meta.json says {size}; it is truncated or corrupted, re-run "
                        "`python -m data_prep.tokenize`")
    if verify and sha256_of(file) != sha256:
        raise DataError(f"data.source: shard '{file}' is corrupted (sha256 differs from "
                        "meta.json); re-run `python -m data_prep.tokenize` or restore it")
    return file


def shard_tokens(cfg):
    """(tokenizer, stream, description, bad records) of a shard dir: memory-mapped, capped at data.max_tokens."""
    stream, tokenizer, _meta = open_shards(os.path.expanduser(cfg.source), verify=cfg.verify_checksums,
                                           tokenizer_spec=cfg.tokenizer)
    if cfg.max_tokens is not None:
        stream = stream.view(0, cfg.max_tokens)
    return tokenizer, stream, f"shard dir '{cfg.source}'", 0


KIND = SourceKind("shards", "a shard dir made by data_prep", claims=lambda source: is_shard_dir(os.path.expanduser(source)),
                  tokens=shard_tokens)
