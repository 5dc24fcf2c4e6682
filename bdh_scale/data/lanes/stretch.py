"""TBPTT lanes: B contiguous token streams per rank, T tokens per step, exactly resumable.

The train stream is cut into W*B equal stretches (W ranks, B lanes per rank; a remainder of
fewer than W*B tokens at the end is dropped). Global lane g = rank*B + i reads stretch g (or
stretch perm[g] for a seeded permutation when seed != 0, the same on every rank), so rank r
owns lanes [r*B, (r+1)*B) and no two lanes, on any rank, ever see the same token.

Each call to next_batch(T) reads the next T+1 tokens of every lane: x = the first T, y = the
last T (next-token targets), with the positions where documents start (batch.py); the window after it starts where this one's targets end, so
windows overlap by one token and every token of a stretch is an input exactly once per epoch.
Because consecutive windows of a lane are contiguous text, the model's state (rho) for that
lane is carried from one step to the next and only detached. T may change between calls (a
sequence-length curriculum): the lane just reads its next T+1 tokens.

When a lane cannot serve T+1 more tokens of its stretch it wraps to the stretch's start (a new
epoch) and its `restarted` flag is True for that batch, as it is on the very first batch: the
loop must reset that lane's state. All lanes have the same stretch length and get the same T,
so they advance in lockstep and share one offset; the flags are still per lane so the loop
never needs to rely on that.

Distributed (Accelerate with several processes): every process calls build_data with its own
rank and world size and serves only its own lanes. Do NOT pass lanes through
accelerator.prepare (it is not a DataLoader): nothing re-splits or duplicates the data.
Because the lanes share one offset, the state_dict of any rank restores every rank.
"""

from __future__ import annotations

import numpy as np
import torch

from bdh_scale.data.batch import Batch, make_batch
from bdh_scale.data.lanes import TokensRead
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.errors import DataError


class StretchLanes(TokensRead):
    """This rank's B lanes over the train stream; next_batch(T) -> Batch(x, y, restarted, doc_start)."""

    def __init__(self, stream: TokenStream, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, pin_memory: bool = False, describe: str = "the train split",
                 score_answers: bool = False, align: int = 1):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"data: bad lane layout batch_size={batch_size}, "
                            f"world_size={world_size}, rank={rank}; need B >= 1, 0 <= rank < W")
        self.stream = stream
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.n_lanes = world_size * batch_size
        self.stretch_len = len(stream) // self.n_lanes // align * align  # stretches begin at multiples of align
        self.describe = describe
        self.score_answers = score_answers  # data.score: answers (the stream marks them: stream.scored)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.seed = seed
        self.lane_ids = np.arange(rank * batch_size, (rank + 1) * batch_size)
        self.stretch_ids = self.lane_ids if seed == 0 else \
            np.random.default_rng(seed).permutation(self.n_lanes)[self.lane_ids]
        self.lane_starts = self.stretch_ids * self.stretch_len
        self._single = stream.pieces[0] if len(stream.pieces) == 1 else None
        self.offset = 0          # position inside every stretch of the next window's first token
        self.fresh = True        # no batch served yet: the next one restarts every lane
        self.epoch = 0           # completed wraps through the stretches
        self.tokens_served = 0   # input tokens handed out by this rank (B*T per batch)
        self.batches_served = 0

    def check_fits(self, T: int) -> None:
        """Raise DataError unless every lane's stretch holds at least one window of T+1."""
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise DataError(f"train.seq_len: T = {T!r} is not a positive integer")
        if self.stretch_len < T + 1:
            need = self.n_lanes * (T + 1)
            raise DataError(
                f"data.source: {self.describe} has {len(self.stream):,} tokens, fewer than "
                f"world_size*batch_size*(T+1) = {self.world_size}*{self.batch_size}*({T}+1) = "
                f"{need:,} needed for one window per lane; lower train.batch_size, "
                f"train.seq_len or the number of processes, lower data.val_fraction, or use a "
                f"larger corpus")

    def next_batch(self, T: int) -> Batch:
        """Next T inputs and targets of every lane of this rank, as a Batch (batch.py): x, y
        LongTensor (B, T) with y[:, t] = x[:, t+1] inside the window, restarted (B,) True where
        the lane begins its stretch in this batch, doc_start (B, T) where documents begin.
        """
        self.check_fits(T)
        restarted = self.fresh
        if self.offset + T + 1 > self.stretch_len:
            self.offset, self.epoch, restarted = 0, self.epoch + 1, True
        window = self._read(self.offset, T + 1)
        doc_start = self.stream.doc_mask(self.lane_starts + self.offset, T + 1)
        scored = self.stream.scored_mask(self.lane_starts + self.offset, T + 1) if self.score_answers else None
        self.offset += T
        self.fresh = False
        self.tokens_served += self.batch_size * T
        self.batches_served += 1
        return make_batch(window, restarted, doc_start, self.pin_memory, scored)

    def _read(self, offset: int, n: int) -> np.ndarray:
        starts = self.lane_starts + offset
        if self._single is not None:  # one array: a single vectorised gather
            return self._single[starts[:, None] + np.arange(n)].astype(np.int64)
        return np.stack([self.stream.read(s, s + n) for s in starts])

    def positions(self) -> list[int]:
        """Global stream index of each of this rank's lanes' next token (for logs/debugging)."""
        return [int(s) + self.offset for s in self.lane_starts]

    def state_dict(self) -> dict:
        return {"offset": self.offset, "fresh": self.fresh, "epoch": self.epoch,
                "tokens_served": self.tokens_served, "batches_served": self.batches_served,
                "n_lanes": self.n_lanes, "stretch_len": self.stretch_len, "seed": self.seed,
                "batch_size": self.batch_size, "positions": self.positions()}

    def load_state_dict(self, d: dict) -> None:
        if d.get("kind", "stretch") != "stretch":
            raise DataError(f"data: the checkpoint was written with {d['kind']} lanes, this run has stretch lanes; "
                            "resume with the same data.source and data.lanes")
        theirs = (d["n_lanes"], d["stretch_len"], d.get("seed", 0))
        if theirs != (self.n_lanes, self.stretch_len, self.seed):
            raise DataError(
                f"data: the checkpoint's lanes ({theirs[0]} lanes of {theirs[1]:,} tokens, "
                f"seed {theirs[2]}) do not match this run's ({self.n_lanes} lanes of "
                f"{self.stretch_len:,}, seed {self.seed}); resume with the same data config, "
                f"train.batch_size, seed and number of processes")
        self.offset, self.fresh, self.epoch = int(d["offset"]), bool(d["fresh"]), int(d["epoch"])
        # The same lanes may be dealt to another number of ranks (a resume with another world size):
        # they share one offset, so any rank's state places this rank's lanes; only the count of
        # tokens this rank handed out scales with its share of the lanes.
        self.tokens_served = int(d["tokens_served"]) * self.batch_size // int(d.get("batch_size", self.batch_size))
        self.batches_served = int(d["batches_served"])

    def close(self) -> None:
        """Nothing to release (the prefetching wrapper has the same method)."""
