"""Sequence-length curriculum: short windows early, longer ones later.

A schedule is a list of [step, T] pairs, "from optimizer step `step` on, use windows of T
tokens". Lanes stay contiguous when T changes (each lane just reads its next T+1 tokens), so
the curriculum never skips or repeats data.
"""

from __future__ import annotations

from bdh_scale.data.errors import DataError


def validate_schedule(schedule, key: str = "train.seq_len_schedule") -> None:
    """Raise DataError unless `schedule` is None or [[0, T0], [s1, T1], ...] with steps strictly
    increasing from 0 and every T a positive integer."""
    if schedule is None:
        return
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise DataError(f"{key}: {schedule!r} is not a non-empty list; "
                        "use e.g. [[0, 64], [200, 128]] or null")
    prev = None
    for i, entry in enumerate(schedule):
        ok = (isinstance(entry, (list, tuple)) and len(entry) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in entry))
        if not ok:
            raise DataError(f"{key}[{i}]: {entry!r} is not a [step, T] pair of integers; "
                            "use e.g. [200, 128]")
        step, T = entry
        if i == 0 and step != 0:
            raise DataError(f"{key}[0]: starts at step {step}; the first entry must be [0, T]")
        if prev is not None and step <= prev:
            raise DataError(f"{key}[{i}]: step {step} is not after step {prev}; "
                            "steps must strictly increase")
        if T < 1:
            raise DataError(f"{key}[{i}]: T = {T} is not >= 1; use a positive window length")
        prev = step


def seq_len_at(step: int, schedule, default: int | None = None) -> int:
    """Window length T to use at optimizer step `step` (0-based).

    `schedule` is [[step, T], ...] (see module docstring) or None, in which case `default`
    (usually train.seq_len) is returned.
    """
    if schedule is None:
        if default is None:
            raise DataError("train.seq_len_schedule: null and no default T given; "
                            "pass default=train.seq_len")
        return int(default)
    validate_schedule(schedule)
    T = schedule[0][1]
    for start, t in schedule:
        if step >= start:
            T = t
        else:
            break
    return int(T)
