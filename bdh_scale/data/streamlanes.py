"""Stream lanes: B lanes per rank fed from a `datasets` stream while training runs.

A background thread reads this rank's share of the stream as units (docstream.py) and hands
them to the tokenizer processes (workers.py); up to data.stream_buffer tokenized units wait in a
bounded queue. Nothing is proportional to the corpus: start-up reads the first units only, and
memory is the buffer plus each lane's current document.

Documents are dealt to lanes whole: when a lane has fewer than T+1 tokens left, it takes the
next document of the stream (lanes in order 0..B-1, so the dealing depends on the stream only,
never on timing or the number of workers). A lane thus reads a contiguous run of whole
documents, and TBPTT continuity holds inside each. Windows are those of stretch lanes: T+1
tokens, the next window starting at the last token of this one. doc_start flags each document's
first token; pieces of a source without documents are not flagged (batch.py). `restarted` is
True on the first batch only: a stream has no end to wrap at, epochs simply follow each other.

Exact resume: state_dict() holds each lane's leftover tokens (the rest of its current document,
with their document flags) and the stream's position after the last document dealt (the
dataset's state_dict before that unit, and how many of its documents were dealt). Loading it
restarts the reader there; the Hub commit the run read is kept and read again.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import torch

from bdh_scale.data.batch import Batch, make_batch
from bdh_scale.data.docstream import DocumentStream, Position
from bdh_scale.data.feeder import Feeder
from bdh_scale.data.workers import TokenizerPool
from bdh_scale.errors import DataError

_EMPTY = np.zeros(0, np.int64)


class _Tokenized:
    """A unit after tokenization: its position and one id array per document."""

    def __init__(self, position: Position, ids: np.ndarray, lengths: np.ndarray, documents: bool):
        self.position, self.documents = position, documents
        self.docs = np.split(ids, np.cumsum(lengths)[:-1])


class StreamLanes:
    """This rank's B lanes over a stream; next_batch(T) -> Batch (batch.py)."""

    def __init__(self, docs: DocumentStream, pool: TokenizerPool, batch_size: int, *, world_size: int = 1,
                 rank: int = 0, buffer: int = 8, pin_memory: bool = False,
                 reopen: Callable[[str], DocumentStream] | None = None):
        """pool: the tokenizer processes (workers.py); the lanes own it from here and close it."""
        self.docs, self.reopen = docs, reopen
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.n_lanes = world_size * batch_size
        self.buffer = buffer
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.pool = pool
        self.pending = [_EMPTY] * batch_size                         # each lane's leftover tokens
        self.pending_starts = [np.zeros(0, np.bool_)] * batch_size   # True where a document begins
        self.position = Position()   # the stream after the last document dealt
        self.fresh = True            # no batch served yet
        self.tokens_served = 0
        self.batches_served = 0
        self.docs_dealt = 0
        self._unit: _Tokenized | None = None
        self._next_doc = 0
        self._feeder = None
        self._start_reader(self.position)

    # --- the lanes interface ------------------------------------------------------------------
    def check_fits(self, T: int) -> None:
        """A stream always has a next window; only T itself can be wrong. Also deals every lane
        its first document now, so a source with fewer documents than lanes is refused at start."""
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise DataError(f"train.seq_len: T = {T!r} is not a positive integer")
        for lane in range(self.batch_size):
            if len(self.pending[lane]) == 0:
                self._deal(lane)

    def next_batch(self, T: int) -> Batch:
        self.check_fits(T)
        for lane in range(self.batch_size):
            while len(self.pending[lane]) < T + 1:
                self._deal(lane)
        window = np.stack([p[:T + 1] for p in self.pending])
        starts = np.stack([s[:T + 1] for s in self.pending_starts])
        self.pending = [p[T:] for p in self.pending]
        self.pending_starts = [s[T:] for s in self.pending_starts]
        batch = make_batch(window, self.fresh, starts if self.docs.source.documents else None, self.pin_memory)
        self.fresh = False
        self.tokens_served += self.batch_size * T
        self.batches_served += 1
        return batch

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def state_dict(self) -> dict:
        return {"kind": "stream", "n_lanes": self.n_lanes, "rank": self.rank, "world_size": self.world_size,
                "revision": self.docs.source.revision, "position": self.position.to_dict(),
                "pending": [torch.from_numpy(np.ascontiguousarray(p, dtype=np.int64)) for p in self.pending],
                "pending_starts": [torch.from_numpy(np.ascontiguousarray(s)) for s in self.pending_starts],
                "fresh": self.fresh, "tokens_served": self.tokens_served, "batches_served": self.batches_served,
                "docs_dealt": self.docs_dealt}

    def load_state_dict(self, d: dict) -> None:
        theirs = (d.get("kind"), d.get("n_lanes"), d.get("rank"), d.get("world_size"))
        ours = ("stream", self.n_lanes, self.rank, self.world_size)
        if theirs != ours:
            raise DataError(f"data: the checkpoint's lanes ({theirs[0] or 'stretch'} lanes, {theirs[1]} in all, "
                            f"rank {theirs[2]} of {theirs[3]}) do not match this run's (stream lanes, "
                            f"{self.n_lanes} in all, rank {self.rank} of {self.world_size}); resume with the "
                            "same data config, train.batch_size and number of processes")
        self._stop_reader()
        if d["revision"] != self.docs.source.revision and self.reopen is not None:
            self.docs = self.reopen(d["revision"])  # the commit the run was reading
        self.pending = [t.numpy().astype(np.int64) for t in d["pending"]]
        self.pending_starts = [t.numpy().astype(np.bool_) for t in d["pending_starts"]]
        self.position = Position.from_dict(d["position"])
        self.fresh, self.docs_dealt = bool(d["fresh"]), int(d["docs_dealt"])
        self.tokens_served, self.batches_served = int(d["tokens_served"]), int(d["batches_served"])
        self._start_reader(self.position)

    def close(self) -> None:
        """Stop the reader thread and the tokenizer processes."""
        self._stop_reader()
        self.pool.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # --- dealing ------------------------------------------------------------------------------
    def _deal(self, lane: int) -> None:
        """Append the stream's next document to `lane`."""
        while self._unit is None or self._next_doc >= len(self._unit.docs):
            try:
                item = self._feeder.get()
            except BaseException:
                self._stop_reader()
                raise
            if self.fresh and item.position.epoch > self.position.epoch and any(len(p) == 0 for p in self.pending):
                have = self.docs_dealt
                self._stop_reader()
                raise DataError(f"data.source: {self.docs.source.describe} has {have} "
                                f"{'documents' if item.documents else 'pieces of text'} for rank {self.rank}, "
                                f"fewer than its {self.batch_size} lanes; lower train.batch_size or the number "
                                f"of processes, or use a larger corpus")
            self._unit, self._next_doc = item, self._skip
            self._skip = 0
        doc = self._unit.docs[self._next_doc]
        self._next_doc += 1
        self.position = Position(self._unit.position.epoch, self._unit.position.state,
                                 self._unit.position.index, self._next_doc)
        flags = np.zeros(len(doc), np.bool_)
        flags[:1] = self._unit.documents
        self.pending[lane] = np.concatenate([self.pending[lane], doc.astype(np.int64)])
        self.pending_starts[lane] = np.concatenate([self.pending_starts[lane], flags])
        self.docs_dealt += 1

    # --- the reader thread ----------------------------------------------------------------------
    def _start_reader(self, position: Position) -> None:
        """Read on from `position`: its unit again (its first `taken` documents skipped), then on."""
        self._unit, self._next_doc, self._skip = None, 0, position.taken
        start = Position(position.epoch, position.state, position.index)
        docs, pool = self.docs, self.pool  # not self: a dropped StreamLanes is collected

        def work(put, stopping):
            _read(docs, start, pool, put, stopping)
        self._feeder = Feeder(work, self.buffer, "bdh-data-stream")

    def _stop_reader(self) -> None:
        feeder = getattr(self, "_feeder", None)
        if feeder is not None:
            feeder.stop()
            self._feeder = None


def _read(docs: DocumentStream, start: Position, pool: TokenizerPool, put, stopping) -> None:
    """Reader thread: units from `start`, tokenized in order, into the bounded queue."""
    positions = deque()

    def units():
        for unit in docs.units(start):
            if stopping():
                return
            positions.append((unit.position, unit.documents))
            yield unit.rows, unit.documents

    for ids, lengths in pool.imap(units()):
        position, documents = positions.popleft()
        if not put(_Tokenized(position, ids, lengths, documents)):
            return
