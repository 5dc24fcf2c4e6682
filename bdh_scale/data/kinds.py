"""What data.source can name: the kinds of source, in the order they are tried. A kind says how
to recognize its sources, how they become tokens (or lanes), whether stream lanes can read them,
whether they mark answers (data.score: answers), and what it requires of the rest of the recipe.

Adding a source is one module defining its kind and one line in KINDS below. build.py asks the
kind of data.source for its tokens (stretch lanes) or its own lanes; config/sections.py asks it
whether its answers may be scored and for its rules against the train section.
"""
from __future__ import annotations

from bdh_scale.data.sources import SourceKind, reader, shards
from bdh_scale.data.synthetic import mqar, passkey
from bdh_scale.errors import DataError

# each module defines its kind beside its code; the order is the order in which they are tried
KINDS: list[SourceKind] = [mqar.KIND, passkey.KIND, shards.KIND, reader.BUNDLED_KIND, reader.FILES_KIND,
                           reader.HUB_KIND]


def kind_of(source: str) -> SourceKind:
    """The kind of source data.source names (the first that claims it; a Hub dataset claims the rest)."""
    for kind in KINDS:
        if kind.claims(source):
            return kind
    raise DataError(f"data.source: '{source}' names no source")  # not reached: the Hub claims every name
