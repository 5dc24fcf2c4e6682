"""Typed config sections: a field's annotation is its check.

A section is a dataclass deriving from `Section`. Each annotation says what the field accepts:

    n_layer: PosInt = 6                              an int >= 1
    dropout: Annotated[float, Range(0, 1)] = 0.1     a float in [0, 1)
    arch: Literal["bdh", "gpt"] = "bdh"              one of these words
    attn_window: PosInt | None = None                an int >= 1, or null

Every field is checked when the section is built (from a recipe, a checkpoint, config.json or
Python), ints and exponent strings ("3e-4", which YAML 1.1 reads as a string) are turned into
floats where a float is wanted, and the section's own `check()` then sees only well-typed values,
for the rules that tie fields together. A failure is one ConfigError naming the key, what is
wrong and what would be right: "model.n_layer: must be >= 1, got 0".
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from bdh_scale.errors import ConfigError
from bdh_scale.utils.quote import short


class Constraint:
    """A bound an Annotated field must meet: ok(value), and what to say when it does not."""

    def ok(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def failure(self, value) -> str:
        return f"must be {self.describe()}, got {short(value)}"


@dataclass(frozen=True)
class Ge(Constraint):
    """value >= low (ints and floats)."""

    low: float

    def ok(self, value) -> bool:
        return value >= self.low

    def describe(self) -> str:
        return f">= {self.low:g}"


@dataclass(frozen=True)
class Gt(Constraint):
    """value > low."""

    low: float

    def ok(self, value) -> bool:
        return value > self.low

    def describe(self) -> str:
        return f"> {self.low:g}"


@dataclass(frozen=True)
class Range(Constraint):
    """low <= value < high."""

    low: float
    high: float

    def ok(self, value) -> bool:
        return self.low <= value < self.high

    def describe(self) -> str:
        return f"in [{self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Between(Constraint):
    """low <= value <= high, both ends included (integers such as a seed's range)."""

    low: int
    high: int

    def ok(self, value) -> bool:
        return self.low <= value <= self.high

    def describe(self) -> str:
        return f"from {self.low:,} to {self.high:,}"


@dataclass(frozen=True)
class NonEmpty(Constraint):
    """A string with something other than spaces in it; `hint` says what to give."""

    hint: str = ""

    def ok(self, value) -> bool:
        return bool(value.strip())

    def describe(self) -> str:
        return "non-empty"

    def failure(self, value) -> str:
        return "empty" + (f"; {self.hint}" if self.hint else "")


PosInt = Annotated[int, Ge(1)]
NonNegInt = Annotated[int, Ge(0)]
PosFloat = Annotated[float, Gt(0)]
NonNegFloat = Annotated[float, Ge(0)]


def words(choices) -> str:
    """'a, b or c'."""
    choices = [str(c) for c in choices]
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def _type_name(hint) -> str:
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return "one of " + words(typing.get_args(hint))
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


class _Reject(Exception):
    """A value that does not fit one arm of a union; the message is what is wrong."""


def _convert(value, hint):
    """value as the annotated type wants it; _Reject saying why it does not fit."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        reasons = []
        for arm in typing.get_args(hint):
            try:
                return _convert(value, arm)
            except _Reject as e:
                reasons.append(str(e))
        # a value of the right type that breaks a bound says so; else the type is what is wrong
        specific = [r for r in reasons if not r.startswith("expected")]
        raise _Reject(specific[0] if specific else f"expected {_type_name(hint)}, got {short(value)}")
    if origin is Annotated:
        base, *constraints = typing.get_args(hint)
        value = _convert(value, base)
        for c in constraints:
            if not c.ok(value):
                raise _Reject(c.failure(value))
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise _Reject(f"{short(value)} is unknown; use {words(choices)}")
        return value
    if hint is type(None):
        if value is not None:
            raise _Reject(f"expected null, got {short(value)}")
        return None
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Reject(f"expected float, got {short(value)}")
        if not math.isfinite(value):
            raise _Reject(f"must be a finite number, got {short(value)}")
        return float(value)
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Reject(f"expected int, got {short(value)}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise _Reject(f"expected {hint.__name__}, got {short(value)}")
        return value
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise _Reject(f"expected a list, got {short(value)}")
        return list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Reject(f"expected a mapping, got {short(value)}")
        return value
    return value


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


class Section:
    """Base of the recipe's sections; subclasses are dataclasses and name their `section`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                continue  # a nested section checked itself when it was built
            try:
                object.__setattr__(self, f.name, _convert(value, hints[f.name]))
            except _Reject as e:
                raise ConfigError(f"{self.key(f.name)}: {e}") from None
        self.check()

    def check(self) -> None:
        """Rules that tie fields together; raise with self.bad(field, message)."""

    def key(self, field: str) -> str:
        return f"{self.section}.{field}" if self.section else field

    def bad(self, field: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.key(field)}: {message}")
