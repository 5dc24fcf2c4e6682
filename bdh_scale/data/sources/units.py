"""One rank's share of a `datasets` stream, as units of documents that can be re-read from where
they start (what stream lanes deal to their lanes, streamlanes.py).

A unit is read in one go and carries its Position: the epoch, the dataset's own state_dict()
just before the unit's first row (None at an epoch's start) and the unit's number in the epoch.
Loading that state into a freshly opened dataset and reading on gives the same unit again, so a
checkpoint holds a position, never the data, and resuming reads only from there on.

Sources of documents (rows of jsonl/parquet/Hub data): `datasets.distributed.split_dataset_by_node`
gives rank r its share: whole shards (files) when their number is a multiple of the world size,
else every W-th document. A unit is the documents of one batch of ROWS_PER_UNIT rows.

Sources without documents (text files, translation pairs): a piece of running text is the unit
a lane reads contiguously, so rows are not split across ranks one by one (rank 0 would get every
other line). The stream is cut, in corpus order, into pieces of at least PIECE_BYTES of
consecutive rows, and rank r keeps pieces r, r+W, r+2W, ...; every rank reads the whole stream
but tokenizes only its own pieces.

Held-out data (heldout.py) never reaches training: documents whose content hash is held out are
dropped (exact duplicates of a held-out document with them), and for sources without documents
the first `held_pieces` pieces are. Every epoch reads the corpus in the same order.

A unit also carries the bad records its read met (badrecords.py; a piece: those of its rows),
for the lanes to decide on, and the position after it. When a read fails on the network, the
stream is opened again after the last unit it gave, with backoff (retry.py); when retries run
out, or a file vanished or cannot be read, the stream raises a DataFailedMidRun naming the file.

Bad records among held-out documents. Every epoch reads the held-out documents again, only to
drop them; the held-out set itself is read once. A bad record in a read whose documents are all
held out is the held-out set's: handed on in epoch 0 only, so it is counted once, however many
epochs follow (data.val_tokens near the corpus size leaves short epochs: a run then makes many
of them while it reads fewer tokens than the files hold). A bad record in a read that also
holds training documents is counted with them, once per epoch. An epoch that holds no text for
this rank, only held-out documents or bad records, is the DataError of an empty source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterator

from bdh_scale.data.sources.badrecords import warn
from bdh_scale.data.sources.reader import DatasetSource
from bdh_scale.data.sources.record_files import HostError, RecordFileError
from bdh_scale.data.sources.retry import Backoff, describe_error, is_network_error
from bdh_scale.errors import DataError, DataFailedMidRun

ROWS_PER_UNIT = 256      # rows per read of a source of documents
PIECE_BYTES = 1 << 16    # least text per piece of a source without documents


@dataclass(frozen=True)
class Position:
    """Where a unit starts (taken = 0), or how far into it the lanes have dealt (taken > 0)."""

    epoch: int = 0
    state: dict | None = None  # the dataset's state_dict() before the unit; None: the epoch's start
    index: int = 0             # the unit's number in its epoch (pieces: counted over all ranks)
    taken: int = 0             # documents of the unit already dealt

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "state": self.state, "index": self.index, "taken": self.taken}

    @classmethod
    def from_dict(cls, d: dict) -> "Position":
        return cls(int(d["epoch"]), d["state"], int(d["index"]), int(d["taken"]))


@dataclass
class Unit:
    position: Position
    rows: list          # str or bytes rows: documents, or the rows of one piece
    documents: bool     # True: every row is a document
    bad: list = field(default_factory=list)  # BadRecords met by the unit's read
    after: Position | None = None            # where the next unit starts


def digest(row) -> bytes:
    """Content hash of a row, for holding documents out of training."""
    data = row if isinstance(row, bytes) else row.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


def row_bytes(rows) -> int:
    return sum(len(r) for r in rows)  # characters or bytes: a piece's size need not be exact


@dataclass
class DocumentStream:
    """Rank `rank` of `world`'s units of `source`, skipping what is held out."""

    source: DatasetSource
    rank: int = 0
    world: int = 1
    held_docs: frozenset = field(default_factory=frozenset)  # digests of held-out documents
    held_pieces: int = 0                                     # pieces held out (no documents)
    retries: int = 0            # data.read_retries: the stream opened again after a network fault
    retry_wait_s: float = 1.0   # data.retry_wait_s: the first wait, doubled at each retry

    def units(self, start: Position = Position(), stopping=lambda: False) -> Iterator[Unit]:
        """Units from `start` on, epoch after epoch, forever, the stream opened again after a
        network fault (retry.py). DataError when a whole epoch holds nothing for this rank;
        DataFailedMidRun when the data fails (a file vanished or unreadable, the retries spent)."""
        backoff = Backoff(self.retries, self.retry_wait_s, warn)
        first = None  # the fault that began a run of retries: the file the host dropped
        while True:
            try:
                for unit in self._units(start):
                    yield unit
                    start = unit.after
                    backoff.succeeded()
                    first = None
            except (DataError, DataFailedMidRun):
                raise
            except Exception as e:
                if not is_network_error(e):
                    fault = self._fault(e)
                    if fault is None:
                        raise  # not the data's failure: a bug, raised as it is
                    raise fault from e
                first = first or e
                if not backoff.wait(e, stopping):
                    raise DataFailedMidRun(f"data: reading {self._where(first)} failed: {describe_error(first)}, and "
                                    f"{backoff.failures} retries over {backoff.waited:.0f} s did not bring it back "
                                    "(data.read_retries, data.retry_wait_s)",
                                    "when the host answers again, or with more data.read_retries") from e

    def _where(self, e: BaseException) -> str:
        return f"'{e.path}'" if isinstance(e, (HostError, RecordFileError)) else self.source.describe

    def _fault(self, e: Exception) -> DataFailedMidRun | None:
        """The failure of a file (not of the network) as a DataFailedMidRun naming it; None for others."""
        if isinstance(e, RecordFileError):
            what = f"data: {e}"
        elif isinstance(e, FileNotFoundError):
            what = f"data: a file of {self.source.describe} vanished while the run read it ({describe_error(e)})"
        elif isinstance(e, OSError):
            what = f"data: a file of {self.source.describe} could not be read ({describe_error(e)})"
        else:
            return None
        return DataFailedMidRun(what, "put the files back as they were when the run started (a resume reads the same "
                               "files), or fix the file")

    def _units(self, start: Position) -> Iterator[Unit]:
        epoch, state, index = start.epoch, start.state, start.index
        while True:
            n = 0  # units with text: an epoch of bad records alone has none
            for unit in self._epoch(epoch, state, index):
                n += bool(unit.rows)
                yield unit
            if n == 0 and state is None:
                rank = f" for rank {self.rank} of {self.world}" if self.world > 1 else ""
                raise DataError(f"data.source: {self.source.describe} holds no text{rank}" + self._held_note())
            epoch, state, index = epoch + 1, None, 0

    def _held_note(self) -> str:
        held = len(self.held_docs) or self.held_pieces
        return (f" once {held:,} {'documents' if self.held_docs else 'pieces'} are held out for validation; "
                "lower data.val_tokens, set data.val_split, or use a larger corpus" if held else
                "; use a larger corpus or fewer processes")

    def _open(self, state: dict | None):
        ds = self.source.open(None)
        if self.source.documents and self.world > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world)
        if state is not None:
            ds.load_state_dict(state)
        return ds

    def _epoch(self, epoch: int, state: dict | None, index: int) -> Iterator[Unit]:
        ds = self._open(state)
        rows_of = self.source.rows(ds, ROWS_PER_UNIT)
        if self.source.documents:
            for rows, bad in rows_of:
                kept = [r for r in rows if digest(r) not in self.held_docs] if self.held_docs else rows
                if epoch > 0 and rows and not kept:
                    bad = []  # the held-out set's bad records: met in epoch 0 (module docstring)
                after = Position(epoch, ds.state_dict(), index + 1)
                if kept or bad:
                    yield Unit(Position(epoch, state, index), kept, True, bad, after)
                state, index = after.state, after.index
            return
        piece, size, piece_bad = [], 0, []
        for rows, bad in rows_of:
            piece += rows
            piece_bad += bad
            size += row_bytes(rows)
            if size >= PIECE_BYTES:
                after = Position(epoch, ds.state_dict(), index + 1)
                if self._mine(index):
                    yield Unit(Position(epoch, state, index), piece, False, piece_bad, after)
                piece, size, piece_bad, state, index = [], 0, [], after.state, after.index
        if (piece or piece_bad) and self._mine(index):
            yield Unit(Position(epoch, state, index), piece, False, piece_bad, Position(epoch, ds.state_dict(), index + 1))

    def _mine(self, piece: int) -> bool:
        return piece % self.world == self.rank and piece >= self.held_pieces

    def holding_out(self, held_docs: frozenset = frozenset(), held_pieces: int = 0) -> "DocumentStream":
        return replace(self, held_docs=frozenset(held_docs), held_pieces=held_pieces)
