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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterator

from bdh_scale.data.sources import DatasetSource
from bdh_scale.errors import DataError

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

    def units(self, start: Position = Position()) -> Iterator[Unit]:
        """Units from `start` on, epoch after epoch, forever. DataError when a whole epoch holds
        nothing for this rank."""
        epoch, state, index = start.epoch, start.state, start.index
        while True:
            n = 0
            for unit in self._epoch(epoch, state, index):
                n += 1
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
            for rows in rows_of:
                kept = [r for r in rows if digest(r) not in self.held_docs] if self.held_docs else rows
                if kept:
                    yield Unit(Position(epoch, state, index), kept, True)
                state, index = ds.state_dict(), index + 1
            return
        piece, size = [], 0
        for rows in rows_of:
            piece += rows
            size += row_bytes(rows)
            if size >= PIECE_BYTES:
                if self._mine(index):
                    yield Unit(Position(epoch, state, index), piece, False)
                piece, size, state, index = [], 0, ds.state_dict(), index + 1
        if piece and self._mine(index):
            yield Unit(Position(epoch, state, index), piece, False)

    def _mine(self, piece: int) -> bool:
        return piece % self.world == self.rank and piece >= self.held_pieces

    def holding_out(self, held_docs: frozenset = frozenset(), held_pieces: int = 0) -> "DocumentStream":
        return replace(self, held_docs=frozenset(held_docs), held_pieces=held_pieces)
