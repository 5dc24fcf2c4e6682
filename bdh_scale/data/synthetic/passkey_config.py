"""The `data.passkey:` section of a recipe: the settings of synthetic:passkey (passkey.py). Its own module so that
the data section (data/config.py) can hold it without importing the source's generator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from bdh_scale.utils.schema import NonEmpty, PosInt, Section


@dataclass
class PasskeyConfig(Section):
    section = "data.passkey"

    # corpus the filler is cut from: a bundled sample ('tinyshakespeare', 'europarl_en_fr') or a text file
    filler: Annotated[str, NonEmpty("a bundled sample such as 'tinyshakespeare' or a text file")] = "tinyshakespeare"
    # digits of the key (the answer a model must recall)
    digits: PosInt = 5
    # fewest tokens of filler between the fact and the question
    min_gap: PosInt = 16
    # most tokens of filler between the fact and the question (gaps are log-uniform in between)
    max_gap: PosInt = 1024
    # most tokens of filler before the fact (uniform from 0)
    max_lead: PosInt = 64
    # episodes (documents) in the stream
    episodes: PosInt = 2000
    # seed of the keys, gaps and filler positions
    seed: int = 0
    # null: episodes follow one another, so windows cut them anywhere; T (= train.seq_len): each
    # episode is padded with filler to a whole number of windows of T tokens and begins a window, so
    # an episode shorter than T has its fact and its question in one window (what a run with
    # train.state=reset can learn from); the lanes and the held-out rows begin at window starts
    window: PosInt | None = None

    def check(self) -> None:
        if self.min_gap > self.max_gap:
            self.bad("min_gap", f"{self.min_gap} is above max_gap={self.max_gap}; need min_gap <= max_gap")
