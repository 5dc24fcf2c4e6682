"""A token stream: one long 1-D sequence of token ids, stored as numpy pieces.

The pieces are in-memory arrays (a corpus tokenized at start-up) or np.memmap views of
data_prep shard files, so a corpus far larger than RAM is read lazily, page by page, and
never becomes a Python list. Reading [a, b) that crosses a shard boundary stitches the pieces.
"""

from __future__ import annotations

import bisect

import numpy as np


class TokenStream:
    """Concatenation of 1-D integer arrays, addressed by global token index."""

    def __init__(self, pieces: list[np.ndarray]):
        self.pieces = [p for p in pieces if len(p) > 0]
        self.starts = [0]
        for p in self.pieces:
            self.starts.append(self.starts[-1] + len(p))
        self.dtype = self.pieces[0].dtype if self.pieces else np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.starts[-1]

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

    def view(self, start: int, stop: int) -> "TokenStream":
        """The sub-stream [start, stop) without copying (memmaps stay memmaps)."""
        start, stop = max(0, start), min(len(self), stop)
        pieces = []
        for piece, p0 in zip(self.pieces, self.starts):
            a, b = max(start, p0), min(stop, p0 + len(piece))
            if a < b:
                pieces.append(piece[a - p0: b - p0])
        return TokenStream(pieces)
