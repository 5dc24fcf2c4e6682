"""Where tokens come from: the kinds of source (SourceKind, registered in data/kinds.py) and how each
is read.

    names.py          what a data.source string names: a bundled sample, local or remote files, a Hub dataset
    reader.py         a text source opened as rows of text (TextSource, DatasetSource), tokenized whole for
                      stretch lanes; the kinds bundled, files and hub
    hub.py            Hugging Face Hub datasets: the commit read, opening, errors
    dataset_rows.py   rows of a `datasets` dataset (text files, Hub) as batches of text
    record_files.py   files of records (JSON Lines, JSON arrays, Parquet) read one record at a time
    translation.py    translation pairs as text
    shards.py         data_prep's token shards (memory-mapped); the kind shards
    units.py          one rank's share of a `datasets` stream, in re-readable units of documents
    retry.py          network faults: what is retried, and how long
    badrecords.py     records that are not text: skipped and counted, or the run stops
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class SourceKind:
    name: str                                  # in messages: "shards", "synthetic:mqar", ...
    what: str                                  # what it is, in words: "a shard dir made by data_prep"
    claims: Callable[[str], bool]              # whether a data.source string names a source of this kind
    tokens: Callable | None = None             # DataConfig -> (tokenizer, TokenStream, describe, bad records skipped)
    build: Callable | None = None              # its own lanes instead: (DataConfig, batch_size=, ...) -> DataBundle
    streams: bool = False                      # stream lanes can read it (data.lanes: stream, or auto)
    marks_answers: bool = False                # data.score: answers has answers to score
    text: bool = True                          # its tokens are text (False: token ids by design, no text check)
    check: Callable | None = None              # RunConfig -> None, raising ConfigError: rules with the train section
    align: Callable | None = None              # DataConfig -> int: train split, lanes, held-out rows start at multiples
