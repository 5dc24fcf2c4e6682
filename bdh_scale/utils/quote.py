"""`short(value)`: a value quoted in an error message, bounded whatever it holds.

A value from a file can be huge, deeply nested or (through YAML aliases) the same container many
times over; repr() of it would be as big as its expansion. Plain Python only: the model config
that imports it is shipped as a model's transformers code (model/hf/).
"""
from __future__ import annotations

import reprlib

SHORT = 80  # characters of a quoted value

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 3, SHORT, SHORT, 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def short(value) -> str:
    """repr(value), at most SHORT characters."""
    text = _repr.repr(value)
    return text if len(text) <= SHORT else text[:SHORT - 3] + "..."
