"""Lanes: how a rank's B lanes serve the training loop one window after another.

Every kind of lanes implements `Lanes` (below); the loop (train/step.py) knows no other:

    tokens.py     TokenStream: a corpus as token ids (in memory or memory-mapped) with document starts
    stretch.py    StretchLanes: W x B contiguous stretches of one TokenStream (the default)
    stream.py     StreamLanes: whole documents of a `datasets` stream, dealt to lanes while training runs
    heldout.py    the held-out set of a stream, read once and kept in the run directory
    prefetch.py   PrefetchLanes: batches of any lanes prepared ahead in a background thread
    feeder.py     the bounded background thread both use
    (synthetic/mqar.py: MQARLanes, episodes generated as they are read)
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from bdh_scale.data.batch import Batch
from bdh_scale.data.sources.badrecords import BadRecords


@runtime_checkable
class Lanes(Protocol):
    """This rank's B lanes: windows of T tokens (+1 target) from contiguous streams, resumable exactly."""

    batch_size: int  # B, the lanes of this rank
    can_fail: bool  # whether reading may fail mid-run (a stream: a bad record, a file gone, the network)
    bad: BadRecords  # bad records skipped so far by this rank (data.on_bad_record=skip)

    def check_fits(self, T: int) -> None:
        """DataError now when the lanes cannot serve a window of T tokens (rather than at step 1)."""

    def next_batch(self, T: int) -> Batch:
        """The next window of every lane."""

    def next_batches(self, T: int, k: int) -> list[Batch]:
        """The k windows of one step, all or none: on a DataFailedMidRun the lanes are as before it."""

    def fail(self, fault) -> None:
        """Stop reading after a fault (this rank's or another's); the lanes can still be saved."""

    def state_dict(self) -> dict:
        """Everything a resume needs to read on exactly where these lanes stand."""

    def load_state_dict(self, d: dict) -> None: ...

    def close(self) -> None:
        """Stop any thread or process the lanes hold."""


class TokensRead:
    """What lanes over tokens already at hand (a TokenStream, generated episodes) share: reading
    cannot fail mid-run, so a step's windows are simply the next k, and nothing is skipped."""

    can_fail = False

    @property
    def bad(self) -> BadRecords:
        return BadRecords("stop", 0)

    def next_batches(self, T: int, k: int) -> list[Batch]:
        return [self.next_batch(T) for _ in range(k)]

    def fail(self, fault) -> None:
        pass
