"""Pre-tokenized shard dirs: the on-disk format written by `python -m data_prep.tokenize`.

    <dir>/meta.json        what is in here (below)
    <dir>/tokenizer.json   the tokenizer the ids were made with (load_tokenizer reads it)
    <dir>/tokens_000000.bin, ...   raw little-endian token ids, dtype from meta.json

meta.json: {"format": "bdh_scale.shards", "version": 1, "source": str, "tokenizer": name,
"vocab_size": int, "dtype": "uint8"|"uint16"|"uint32", "num_tokens": int, "text_bytes": int,
"shards": [{"file": str, "num_tokens": int, "sha256": hex}, ...]}.

Shards are read as np.memmap (nothing is loaded up front); the stream is their concatenation
in listed order. The sha256 of every shard is checked on open (data.verify_checksums), so a
truncated or corrupted file is refused with its name rather than silently training on garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bdh_scale.errors import DataError
from bdh_scale.data.stream import TokenStream
from bdh_scale.data.tokenizer import load_tokenizer, token_dtype

META_FILE = "meta.json"
FORMAT = "bdh_scale.shards"


def is_shard_dir(path) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def sha256_of(path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Append token arrays; rolls over to a new .bin file every `shard_tokens` tokens and
    hashes each file as it is written. close() writes tokenizer.json and meta.json."""

    def __init__(self, out_dir, tokenizer, shard_tokens: int = 100_000_000, source: str = ""):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer, self.source = tokenizer, source
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.text_bytes = 0
        self._file = self._hash = None
        self._in_shard = 0

    def add(self, ids: np.ndarray, text_bytes: int = 0) -> None:
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        self.text_bytes += text_bytes
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
        self.tokenizer.save(self.dir)
        meta = {"format": FORMAT, "version": 1, "source": self.source,
                "tokenizer": self.tokenizer.name, "vocab_size": self.tokenizer.vocab_size,
                "dtype": self.dtype.name, "num_tokens": sum(s["num_tokens"] for s in self.shards),
                "text_bytes": self.text_bytes, "shards": self.shards}
        (self.dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return meta


def read_meta(path) -> dict:
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"data.source: cannot read shard metadata '{meta_path}' ({e}); "
                        "re-run `python -m data_prep.tokenize`") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"data.source: '{meta_path}' is not a bdh_scale shard index "
                        f"(format {meta.get('format')!r}); re-run `python -m data_prep.tokenize`")
    return meta


def open_shards(path, verify: bool = True, tokenizer_spec: str = "bytes"):
    """(TokenStream over memmapped shards, tokenizer, meta) for a shard dir.

    The shard dir's own tokenizer is used. `tokenizer_spec` (data.tokenizer) is "bytes" (the
    default, meaning "whatever the shards were made with") or a tokenizer that must be the
    same as the shards' one.
    """
    meta = read_meta(path)
    tokenizer = load_tokenizer(path)
    if tokenizer_spec != "bytes" and not load_tokenizer(tokenizer_spec).same_as(tokenizer):
        raise DataError(f"data.tokenizer: '{tokenizer_spec}' differs from the tokenizer the "
                        f"shards in '{path}' were made with ({tokenizer.name}); set "
                        f"data.tokenizer to 'bytes' (use the shards' own) or re-tokenize")
    if meta["vocab_size"] != tokenizer.vocab_size:
        raise DataError(f"data.source: '{path}/tokenizer.json' has vocab "
                        f"{tokenizer.vocab_size} but meta.json says {meta['vocab_size']}")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    pieces = []
    for shard in meta["shards"]:
        file = Path(path) / shard["file"]
        if not file.is_file():
            raise DataError(f"data.source: shard '{file}' listed in meta.json is missing")
        expected = shard["num_tokens"] * dtype.itemsize
        if file.stat().st_size != expected:
            raise DataError(f"data.source: shard '{file}' has {file.stat().st_size} bytes, "
                            f"meta.json says {expected}; it is truncated or corrupted, re-run "
                            "`python -m data_prep.tokenize`")
        if verify and sha256_of(file) != shard["sha256"]:
            raise DataError(f"data.source: shard '{file}' is corrupted (sha256 differs from "
                            "meta.json); re-run `python -m data_prep.tokenize` or restore it")
        if shard["num_tokens"]:
            pieces.append(np.memmap(file, dtype=dtype, mode="r"))
    return TokenStream(pieces), tokenizer, meta
