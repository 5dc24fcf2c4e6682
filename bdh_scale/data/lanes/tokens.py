"""A token stream: one long 1-D sequence of token ids, stored as numpy pieces, and where its
documents start.

The pieces are in-memory arrays (a corpus tokenized at start-up) or np.memmap views of
data_prep shard files, so a corpus far larger than RAM is read lazily, page by page, and
never becomes a Python list. Reading [a, b) that crosses a shard boundary stitches the pieces.

Document starts (`doc_starts`: sorted global token offsets, an array or a memmap of a shard
dir's document index) are kept for sources made of documents (rows of jsonl/parquet/Hub data);
None means the source has no document boundaries (text files, the bundled corpora). A view
keeps the same index and only shifts it, so cutting a 100M-document stream into train and val
copies nothing.

`scored` (synthetic sources: one in-memory bool per token, or None) marks the tokens that are
answers, the only targets scored with data.score: answers (batch.py).
"""

from __future__ import annotations

import bisect

import numpy as np


class TokenStream:
    """Concatenation of 1-D integer arrays, addressed by global token index."""

    def __init__(self, pieces: list[np.ndarray], doc_starts: np.ndarray | None = None,
                 doc_shift: int = 0, scored: np.ndarray | None = None):
        self.pieces = [p for p in pieces if len(p) > 0]
        self.starts = [0]
        for p in self.pieces:
            self.starts.append(self.starts[-1] + len(p))
        self.dtype = self.pieces[0].dtype if self.pieces else np.dtype(np.uint8)
        # doc_starts[i] - doc_shift is where document i starts in this stream (may be < 0 or
        # past the end: a view keeps its parent's index; queries only look inside [0, len))
        self.doc_starts = doc_starts
        self.doc_shift = doc_shift
        self.scored = scored

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def has_documents(self) -> bool:
        return self.doc_starts is not None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as a fresh int64 array (safe to hand to torch)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"read [{start}, {stop}) outside a stream of {len(self)} tokens")
        out = np.empty(stop - start, dtype=np.int64)
        i = bisect.bisect_right(self.starts, start) - 1
        pos = start
        while pos < stop:
            piece, p0 = self.pieces[i], self.starts[i]
            take = min(stop, p0 + len(piece)) - pos
            out[pos - start: pos - start + take] = piece[pos - p0: pos - p0 + take]
            pos += take
            i += 1
        return out

    def doc_mask(self, starts, n: int) -> np.ndarray | None:
        """(len(starts), n) bools: token starts[i] + j begins a document; None without documents."""
        if self.doc_starts is None:
            return None
        starts = np.asarray(starts, dtype=np.int64)
        mask = np.zeros((len(starts), n), dtype=np.bool_)
        for i, s in enumerate(starts):
            a = s + self.doc_shift
            lo, hi = np.searchsorted(self.doc_starts, [a, a + n])  # binary search: a memmap stays on disk
            mask[i, np.asarray(self.doc_starts[lo:hi], dtype=np.int64) - a] = True
        return mask

    def num_documents(self) -> int:
        """Documents that start inside this stream (0 without documents)."""
        if self.doc_starts is None:
            return 0
        lo, hi = np.searchsorted(self.doc_starts, [self.doc_shift, self.doc_shift + len(self)])
        return int(hi - lo)

    def view(self, start: int, stop: int) -> "TokenStream":
        """The sub-stream [start, stop) without copying (memmaps stay memmaps)."""
        start, stop = max(0, start), min(len(self), stop)
        pieces = []
        for piece, p0 in zip(self.pieces, self.starts):
            a, b = max(start, p0), min(stop, p0 + len(piece))
            if a < b:
                pieces.append(piece[a - p0: b - p0])
        scored = None if self.scored is None else self.scored[start:stop]
        return TokenStream(pieces, self.doc_starts, self.doc_shift + start, scored)

    def scored_mask(self, starts, n: int) -> np.ndarray | None:
        """(len(starts), n) bools: token starts[i] + j is scored; None when every token is."""
        if self.scored is None:
            return None
        return self.scored[np.asarray(starts, dtype=np.int64)[:, None] + np.arange(n)]


def concatenate(streams: list[TokenStream]) -> TokenStream:
    """One stream of several streams of documents (a mixture's held-out sets), their document starts kept."""
    pieces, starts, at = [], [], 0
    for s in streams:
        pieces += s.pieces
        lo, hi = np.searchsorted(s.doc_starts, [s.doc_shift, s.doc_shift + len(s)])
        starts.append(np.asarray(s.doc_starts[lo:hi], dtype=np.int64) - s.doc_shift + at)
        at += len(s)
    return TokenStream(pieces, np.concatenate(starts))
