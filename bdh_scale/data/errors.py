"""One exception type for every data problem a user can fix.

It subclasses ValueError so config-level code that catches ValueError keeps working; the
message always starts with the recipe key at fault ("data.source: ...") and says what to do.
"""


class DataError(ValueError):
    """A data source, tokenizer or lane layout that cannot work, with the fix in the message."""
