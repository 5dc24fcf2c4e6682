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
restarts the reader there; the Hub commit the run read is kept and read again, and the files a
run read must all be there again (a position in a list of files means nothing in another list).

Faults. The bad records a unit's read met are decided on when the unit is dealt
(data.on_bad_record, badrecords.py); a data fault of the reader (a file gone, the network retries
spent: docstream.py) reaches the lanes at the same point. `next_batches` takes a step's windows
all or nothing: on a DataFailedMidRun the lanes are put back as they were before the step, so that a
checkpoint written then is the last completed step's, and the fault is raised. The warnings of
records skipped before the first batch (every lane is dealt its first document at start-up,
check_fits) are said with that batch: a resumed run loads its checkpoint's position and count in
between, and the records its start-up met, counted before the checkpoint, are not said again.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from bdh_scale.data.batch import Batch, make_batch
from bdh_scale.data.lanes.feeder import Feeder
from bdh_scale.data.sources.badrecords import BadRecords
from bdh_scale.data.sources.units import DocumentStream, Position
from bdh_scale.data.tokenize.workers import TokenizerPool
from bdh_scale.errors import DataError, DataFailedMidRun

_EMPTY = np.zeros(0, np.int64)


class _Tokenized:
    """A unit after tokenization: its position and one id array per document."""

    def __init__(self, position: Position, after: Position, ids: np.ndarray, lengths: np.ndarray, documents: bool,
                 bad: list):
        self.position, self.after, self.documents, self.bad = position, after, documents, bad
        self.docs = np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []


class StreamLanes:
    """This rank's B lanes over a stream; next_batch(T) -> Batch (batch.py)."""

    can_fail = True  # a bad record under stop, a file gone, the network retries spent

    def __init__(self, docs: DocumentStream, pool: TokenizerPool, batch_size: int, *, world_size: int = 1,
                 rank: int = 0, buffer: int = 8, pin_memory: bool = False,
                 reopen: Callable[[str], DocumentStream] | None = None, bad_records: BadRecords | None = None):
        """pool: the tokenizer processes (workers.py); the lanes own it from here and close it."""
        self.docs, self.reopen = docs, reopen
        self.bad = bad_records or BadRecords("stop", 0)  # data.on_bad_record, and this rank's count
        self.bad.hold()  # until the first batch (module docstring)
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
        self._failed: DataFailedMidRun | None = None  # the fault that stopped the lanes (they only save from then on)
        self._before: dict | None = None       # the lanes before the last next_batches (_mark)
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
        self.bad.release()
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

    def next_batches(self, T: int, k: int) -> list[Batch]:
        """The k windows of one step, or a DataFailedMidRun with the lanes as they were before it (a bad
        record under stop, a file gone, the network retries spent; a DataError of the source found
        mid-run too). The reader is stopped then: the lanes can still be saved, not read."""
        if self._failed is not None:
            raise self._failed
        self._before = self._mark()
        try:
            return [self.next_batch(T) for _ in range(k)]
        except (DataFailedMidRun, DataError) as e:
            fault = e if isinstance(e, DataFailedMidRun) else DataFailedMidRun(str(e), "fix the data or the recipe")
            self.fail(fault)
            raise fault from None

    def fail(self, fault: DataFailedMidRun) -> None:
        """Stop on `fault` (this rank's, another's, or too many bad records in all): the lanes go back
        to where they were before the last next_batches, and the reader stops."""
        self._stop_reader()
        if self._failed is None and self._before is not None:
            self._restore(self._before)
        self._failed = fault

    _MARKED = ("pending", "pending_starts", "position", "fresh", "tokens_served", "batches_served", "docs_dealt")

    def _mark(self) -> dict:
        """What state_dict() reads (lists copied: their arrays are replaced, never changed in place)."""
        return {name: list(v) if isinstance(v := getattr(self, name), list) else v for name in self._MARKED} | \
            {"bad_records": self.bad.count}

    def _restore(self, mark: dict) -> None:
        for name in self._MARKED:
            setattr(self, name, mark[name])
        self.bad.count = mark["bad_records"]

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def state_dict(self) -> dict:
        return {"kind": "stream", "n_lanes": self.n_lanes, "rank": self.rank, "world_size": self.world_size,
                "revision": self.docs.source.revision, "position": self.position.to_dict(),
                "pending": [torch.from_numpy(np.ascontiguousarray(p, dtype=np.int64)) for p in self.pending],
                "pending_starts": [torch.from_numpy(np.ascontiguousarray(s)) for s in self.pending_starts],
                "fresh": self.fresh, "tokens_served": self.tokens_served, "batches_served": self.batches_served,
                "docs_dealt": self.docs_dealt, "bad_records": self.bad.count, "files": list(self.docs.source.files)}

    def load_state_dict(self, d: dict) -> None:
        theirs = (d.get("kind"), d.get("n_lanes"), d.get("rank"), d.get("world_size"))
        ours = ("stream", self.n_lanes, self.rank, self.world_size)
        if theirs != ours:
            raise DataError(f"data: the checkpoint's lanes ({theirs[0] or 'stretch'} lanes, {theirs[1]} in all, "
                            f"rank {theirs[2]} of {theirs[3]}) do not match this run's (stream lanes, "
                            f"{self.n_lanes} in all, rank {self.rank} of {self.world_size}); resume with the "
                            "same data config, train.batch_size and number of processes")
        self._check_files(d.get("files", list(self.docs.source.files)))
        self._stop_reader()
        if d["revision"] != self.docs.source.revision and self.reopen is not None:
            self.docs = self.reopen(d["revision"])  # the commit the run was reading
        self.pending = [t.numpy().astype(np.int64) for t in d["pending"]]
        self.pending_starts = [t.numpy().astype(np.bool_) for t in d["pending_starts"]]
        self.position = Position.from_dict(d["position"])
        self.fresh, self.docs_dealt = bool(d["fresh"]), int(d["docs_dealt"])
        self.tokens_served, self.batches_served = int(d["tokens_served"]), int(d["batches_served"])
        self.bad.count = int(d.get("bad_records", 0))
        self.bad.hold()  # the start-up's records are the checkpoint's: counted in it, said by the run that met them
        self._start_reader(self.position)

    def _check_files(self, theirs: list) -> None:
        ours = list(self.docs.source.files)
        if theirs == ours:
            return
        gone, new = [f for f in theirs if f not in ours], [f for f in ours if f not in theirs]
        change = "; ".join(part for part in (f"missing now: {', '.join(gone[:5])}" if gone else "",
                                             f"new: {', '.join(new[:5])}" if new else "") if part) or "in another order"
        raise DataError(f"data.source: {self.docs.source.describe} holds other files than when the checkpoint was "
                        f"written ({change}); a stream resumes in the files it was reading: put them back as they "
                        "were, or start afresh (train.resume=null)")

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
            if self._skip == 0:  # a unit met again on resume (_skip > 0) had its bad records decided on then
                self.bad.meet(item.bad)
                if not item.docs:  # bad records only: a resume starts after it
                    self.position = item.after
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
    in_flight = deque()  # what the tokens of each unit sent to the pool come back with

    def units():
        for unit in docs.units(start, stopping):
            if stopping():
                return
            in_flight.append((unit.position, unit.after, unit.documents, unit.bad))
            yield unit.rows, unit.documents

    for ids, lengths in pool.imap(units()):
        position, after, documents, bad = in_flight.popleft()
        if not put(_Tokenized(position, after, ids, lengths, documents, bad)):
            return


@contextmanager
def before_step_one(resource):
    """Starting a stream: a data fault before step 1 is the input's (a DataError, exit 2, nothing
    written), and `resource` (the tokenizer pool, the lanes) is closed on any failure."""
    try:
        yield
    except DataFailedMidRun as e:
        resource.close()
        raise DataError(str(e)) from None
    except BaseException:
        resource.close()
        raise
