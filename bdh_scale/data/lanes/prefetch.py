"""Prefetching lanes: the next batches are read in a background thread while the model steps.

PrefetchLanes has the Lanes interface. A worker thread runs the wrapped Lanes ahead by up to
`depth` batches for the T of the last call, so next_batch(T) usually just pops a ready batch.
Each prepared batch carries the lane state *after* it was produced; handing it out makes that
the wrapper's state. So state_dict() is always the position after the last batch handed out,
never after the last one prepared, and a resumed run continues exactly where the consumer was.

When T changes (a curriculum step) or a state is loaded, the worker is stopped, the batches it
prepared are dropped, the lanes are rewound to the consumer's state and the worker restarts
with the new T; nothing is skipped or repeated.
"""

from __future__ import annotations

from bdh_scale.data.batch import Batch
from bdh_scale.data.lanes import TokensRead
from bdh_scale.data.lanes.feeder import Feeder
from bdh_scale.data.lanes.stretch import StretchLanes


class PrefetchLanes(TokensRead):
    """Lanes whose batches are prepared `depth` ahead in a daemon thread."""

    def __init__(self, lanes: StretchLanes, depth: int = 2):
        self.lanes = lanes
        self.depth = max(1, depth)
        self.batch_size, self.n_lanes = lanes.batch_size, lanes.n_lanes
        self.stretch_len = lanes.stretch_len
        self._state = lanes.state_dict()   # state after the last batch handed out
        self._T = None                     # window length the worker is producing
        self._feeder = None

    # --- the Lanes interface -------------------------------------------------------------
    def next_batch(self, T: int) -> Batch:
        if self._feeder is None or T != self._T:
            self.lanes.check_fits(T)       # raise bad T here, in the caller's thread
            self._restart(T)
        try:
            batch, state = self._feeder.get()
        except BaseException:
            self._halt()  # rewinds the lanes to the last batch handed out
            raise
        self._state = state
        return batch

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, d: dict) -> None:
        self._halt()
        self.lanes.load_state_dict(d)
        self._state = self.lanes.state_dict()

    def check_fits(self, T: int) -> None:
        self.lanes.check_fits(T)

    def positions(self) -> list[int]:
        return list(self._state["positions"])

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    @property
    def tokens_served(self) -> int:
        return self._state["tokens_served"]

    @property
    def batches_served(self) -> int:
        return self._state["batches_served"]

    def close(self) -> None:
        """Stop the worker (the lanes keep the consumer's position)."""
        self._halt()

    def __del__(self):
        self._halt()

    # --- worker management ---------------------------------------------------------------
    def _restart(self, T: int) -> None:
        self._halt()
        self._T = T
        lanes = self.lanes  # the worker gets the lanes, not self, so a dropped PrefetchLanes is collected

        def work(put, stopping):
            while not stopping() and put((lanes.next_batch(T), lanes.state_dict())):
                pass
        self._feeder = Feeder(work, self.depth, "bdh-data-prefetch")

    def _halt(self) -> None:
        """Stop the worker, drop what it prepared, rewind the lanes to the consumer's state."""
        feeder = getattr(self, "_feeder", None)
        if feeder is None:
            return
        feeder.stop()
        self._feeder = None
        self.lanes.load_state_dict(self._state)
