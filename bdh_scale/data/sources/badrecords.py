"""Records that are not text, and what a run does with them (data.on_bad_record).

A bad record is a JSON line that does not parse or is not UTF-8, or a record that is not an
object, has no data.text_column, or holds null, "" or something other than text there. The
readers (records.py, rows.py) report each one with where it is (file and line or row) and why;
they never decide. The stream lanes decide when they deal the unit that held it, so the decision
falls at the same step however far ahead the reader is, and a resumed run decides the same:
  stop   DataFailedMidRun naming the record (the loop saves a checkpoint at the last completed step)
  skip   a warning naming it, and a count (data/bad_records in metrics.jsonl and the trackers);
         past data.max_bad_records, all processes together, the run stops as with stop
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable

from bdh_scale.errors import DataFailedMidRun


@dataclass(frozen=True)
class BadRecord:
    where: str  # the file (or Hub shard) and the line or row: "'/data/part-005.jsonl' line 400"
    why: str    # "not JSON (Expecting ',' delimiter: line 1 column 57 (char 56))"

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class BadRecords:
    """data.on_bad_record and data.max_bad_records applied to the bad records a reader met."""

    def __init__(self, on_bad_record: str, max_bad_records: int, count: int = 0):
        self.skip, self.max = on_bad_record == "skip", max_bad_records
        self.count = count  # skipped so far by this process (a checkpoint keeps it)
        self.held: list[str] | None = None  # warnings not said yet (hold); None: each said at once

    def meet(self, bad: Iterable[BadRecord]) -> None:
        """Skip and count `bad`, or stop at the first (DataFailedMidRun)."""
        for record in bad:
            if not self.skip:
                raise DataFailedMidRun(f"data: bad record in {record} (data.on_bad_record=stop)",
                                "fix or remove the record, or set data.on_bad_record=skip to drop such records")
            self.count += 1
            line = f"data: skipped bad record {record} ({self.count} skipped by this process)"
            if self.held is None:
                warn(line)
            else:
                self.held.append(line)

    def hold(self) -> None:
        """Keep the warnings of the records met from now on until release(); those held so far are
        dropped (the lanes that met them were replaced by a checkpoint's, with its count)."""
        self.held = []

    def release(self) -> None:
        """Say the warnings held, and each from now on at once."""
        for line in self.held or []:
            warn(line)
        self.held = None

    def past_cap(self, total: int) -> DataFailedMidRun | None:
        """The fault when `total` (all processes together) is past data.max_bad_records."""
        if total <= self.max:
            return None
        return DataFailedMidRun(f"data: {total} bad records skipped, more than data.max_bad_records={self.max} (the "
                         "warnings above name each one)", "fix the data or raise data.max_bad_records")
