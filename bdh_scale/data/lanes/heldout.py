"""The held-out set of a streamed source: fixed, read once, the same on every rank and resume.

It is the dataset's validation split when data.val_split names one, else the first documents of
the training stream (for sources without documents: its first pieces, docstream.py), which are
then held out of training. Either way reading stops at data.val_tokens tokens, so a web-scale
dataset costs a few seconds here, not a pass over it.

Every rank of a fresh run reads it itself (the same rows of the same commit, so the same
tokens), with its tokenizer processes. The run keeps it in its directory (`held_out/`, written atomically by the main
process); a resumed run reads it back from there, so its validation figures compare with the
ones before the interruption and it holds out exactly the same documents, even if the Hub
dataset has changed since.

    held_out/tokens.npy       the held-out token ids
    held_out/doc_starts.npy   where its documents start (empty without documents)
    held_out/digests.npy      (n, 16) uint8: content hashes of the documents held out of training
    held_out/meta.json        what it was read from (compared before it is used), pieces held out

A mixture (data.sources) keeps each source's held-out set in held_out/<name>/, laid out the same.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bdh_scale.data.config import DataConfig
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.sources.badrecords import BadRecords
from bdh_scale.data.sources.units import DocumentStream, digest
from bdh_scale.data.tokenize.encode import tokenizer_hash
from bdh_scale.data.tokenize.workers import TokenizerPool
from bdh_scale.errors import DataError, DataFailedMidRun
from bdh_scale.utils.atomic import atomic_path
from bdh_scale.utils.bounded import read_json

HELD_OUT = "held_out"  # inside the run directory


@dataclass
class HeldOut:
    tokens: np.ndarray
    doc_starts: np.ndarray | None   # None: a source without documents
    digests: frozenset = field(default_factory=frozenset)  # documents held out of training
    pieces: int = 0                                        # pieces held out of training
    meta: dict = field(default_factory=dict)

    @property
    def stream(self) -> TokenStream:
        return TokenStream([self.tokens], self.doc_starts)


def identity(cfg: DataConfig, tokenizer) -> dict:
    """What a cached held-out set must have been read with to be used (not the Hub commit: a
    resumed run keeps its held-out set even when the dataset has moved on)."""
    return {"source": cfg.source, "hub_config": cfg.hub_config, "hub_split": cfg.hub_split,
            "val_split": cfg.val_split, "val_tokens": cfg.val_tokens, "text_column": cfg.text_column,
            "doc_separator": cfg.doc_separator, "translation": cfg.translation,
            "tokenizer_sha256": tokenizer_hash(tokenizer)}


def read_held_out(cfg: DataConfig, docs: DocumentStream, tokenizer, pool: TokenizerPool) -> HeldOut:
    """Read data.val_split (or the first documents of `docs`'s whole stream) up to data.val_tokens,
    tokenized by `pool` (the stream lanes' own tokenizer processes)."""
    from_split = cfg.val_split is not None
    whole = DocumentStream(_split_source(docs.source, cfg.val_split) if from_split else docs.source,
                           retries=docs.retries, retry_wait_s=docs.retry_wait_s)
    in_flight = deque()

    def first_epoch():  # rank 0 of 1: the stream in corpus order, once (it may be shorter than val_tokens)
        for unit in whole.units():
            if unit.position.epoch > 0:
                return
            in_flight.append(unit)
            yield unit.rows, unit.documents

    tokens, starts, digests, pieces, n = [], [], [], 0, 0
    results = pool.imap(first_epoch())
    # under skip the training stream warns and counts them, in its first epoch only (docstream.py)
    refuse = BadRecords("stop", 0) if cfg.on_bad_record == "stop" else None
    for ids, lengths in results:
        unit = in_flight.popleft()
        if refuse is not None:
            try:
                refuse.meet(unit.bad)
            except DataFailedMidRun as e:  # before step 1: the input is refused
                results.close()
                raise DataError(str(e)) from None
        for row, doc in zip(unit.rows if unit.documents else [None], np.split(ids, np.cumsum(lengths)[:-1])):
            if unit.documents:
                starts.append(n)
                digests.append(digest(row))
            tokens.append(doc)
            n += len(doc)
            if n >= cfg.val_tokens:
                break
        pieces = unit.position.index + 1
        if n >= cfg.val_tokens:
            break
    results.close()
    documents = docs.source.documents
    return HeldOut(np.concatenate(tokens)[:cfg.val_tokens], np.asarray(starts, np.int64) if documents else None,
                   frozenset() if from_split else frozenset(digests),
                   0 if (from_split or documents) else pieces,
                   meta={**identity(cfg, tokenizer), "revision": docs.source.revision, "documents": documents,
                         "read_from": f"split '{cfg.val_split}'" if from_split else "the first documents"})


def _split_source(source, split: str):
    from dataclasses import replace

    return replace(source, open=lambda _split: source.open(split))


def save_held_out(held: HeldOut, run_dir, name: str | None = None) -> Path:
    """Write `held` into <run_dir>/held_out (a mixture's source: held_out/<name>) atomically (main process)."""
    path = Path(run_dir) / HELD_OUT / (name or "")
    with atomic_path(path, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "tokens.npy", held.tokens)
        np.save(tmp / "doc_starts.npy", held.doc_starts if held.doc_starts is not None else np.zeros(0, np.int64))
        np.save(tmp / "digests.npy", np.frombuffer(b"".join(sorted(held.digests)), np.uint8).reshape(-1, 16))
        (tmp / "meta.json").write_text(json.dumps({**held.meta, "pieces": held.pieces}, indent=2) + "\n")
    return path


def load_held_out(run_dir, cfg: DataConfig, tokenizer, name: str | None = None) -> HeldOut | None:
    """The held-out set cached in `run_dir` (of a mixture's source `name`) if it was read with this
    config and tokenizer, else None."""
    path = Path(run_dir) / HELD_OUT / (name or "")
    try:
        meta = read_json(path / "meta.json", error=DataError, what="held-out metadata")
        want = identity(cfg, tokenizer)  # hashes the tokenizer: once
        if {k: meta.get(k) for k in want} != want:
            return None
        tokens = np.load(path / "tokens.npy")
        starts = np.load(path / "doc_starts.npy") if meta["documents"] else None
        digests = np.load(path / "digests.npy")
    except (OSError, ValueError, KeyError, TypeError):  # DataError is a ValueError: not ours, read afresh
        return None
    return HeldOut(tokens, starts, frozenset(bytes(d) for d in digests), int(meta["pieces"]), meta)
