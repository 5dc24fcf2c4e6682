"""The `data.mqar:` section of a recipe: the settings of synthetic:mqar (mqar.py). Its own module so that
the data section (data/config.py) can hold it without importing the source's generator."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from bdh_scale.utils.quote import short
from bdh_scale.utils.schema import NonEmpty, NonNegInt, PosInt, Section


@dataclass
class MQARConfig(Section):
    section = "data.mqar"

    # (key, value) pairs per episode; keys are distinct, so at most V/2 - 1 (127 for bytes)
    pairs: PosInt = 8
    # T of the layout; null: the run's train.seq_len (which must then stay fixed: no seq_len_schedule)
    window: PosInt | None = None
    # [min, max] distance in windows between the pairs' window and the queries' (0: the same window)
    gap: list[int] = field(default_factory=lambda: [0, 0])
    # curriculum: [[step, min, max], ...] sorted by step; from each optimizer step on, new episodes
    # draw their distance from [min, max] (the first entry must be at step 0); null: data.mqar.gap
    gap_schedule: list[list[int]] | None = None
    # filler between pairs and queries: "constant" (data.mqar.filler_token), "random" (uniform
    # over the vocabulary), or a bundled corpus / text file whose tokens are cut at random offsets
    filler: Annotated[str, NonEmpty("'constant', 'random' or a corpus such as 'tinyshakespeare'")] = "constant"
    # where the values come from: "upper" (ids V/2 .. V-1, apart from the keys: Zoology's layout) or
    # "keys" (the keys' own ids 1 .. V/2-1, so nothing but its position tells a value from a key, as
    # with digits copied from running text)
    values: Literal["upper", "keys"] = "upper"
    # the filler token of filler=constant
    filler_token: NonNegInt = 0
    # distance of the held-out episodes (validation); null: the largest distance trained on
    val_gap: NonNegInt | None = None
    # held-out episodes, from their own seed (never trained on)
    val_episodes: PosInt = 256
    seed: int = 0  # seed of the training episodes (the held-out ones have their own)

    def check(self) -> None:
        if not (isinstance(self.gap, list) and len(self.gap) == 2 and all(isinstance(g, int) and g >= 0 for g in self.gap)
                and self.gap[0] <= self.gap[1]):
            self.bad("gap", f"{short(self.gap)} is not [min, max] windows with 0 <= min <= max; use e.g. [0, 0] or [1, 8]")
        sched = self.gap_schedule
        if sched is not None:
            ok = isinstance(sched, list) and len(sched) > 0 and all(
                isinstance(e, list) and len(e) == 3 and all(isinstance(v, int) and v >= 0 for v in e) and e[1] <= e[2]
                for e in sched)
            steps = [e[0] for e in sched] if ok else []
            if not ok or steps[0] != 0 or steps != sorted(set(steps)):
                self.bad("gap_schedule", f"{short(sched)} is not [[step, min, max], ...] with steps rising from 0 and "
                                         "0 <= min <= max; use e.g. [[0, 0, 1], [500, 0, 4]] or null")

    def ranges(self) -> list[tuple[int, int, int]]:
        """The curriculum as (first step, min, max) entries (one entry without a schedule)."""
        return [tuple(e) for e in self.gap_schedule] if self.gap_schedule else [(0, *self.gap)]

    @property
    def longest(self) -> int:
        return max(hi for _, _, hi in self.ranges())

    @property
    def shortest(self) -> int:
        return min([lo for _, lo, _ in self.ranges()] + [self.held_out_gap])

    @property
    def held_out_gap(self) -> int:
        return self.longest if self.val_gap is None else self.val_gap
