"""Rows of a `datasets` dataset as batches of text, in corpus order: the one place that reads
the text column of text files and Hub datasets, renders their translation pairs and appends the
document separator. (Files of records, JSON Lines and Parquet, are read by records.py.)

Every batch comes with the bad records it held (badrecords.py): rows whose text is null or
empty, named by the dataset's shard and the row the read had reached (a Hub stream does not say
more exactly where a row came from)."""

from __future__ import annotations

from typing import Iterator

from bdh_scale.data.config import DataConfig
from bdh_scale.data.sources.badrecords import BadRecord
from bdh_scale.data.sources.translation import format_translation_rows
from bdh_scale.errors import DataError

ROWS_PER_BATCH = 1024


def text_file_dataset(files, raw_bytes: bool = False):
    """Lines of text files, line breaks kept, through datasets' "text" builder (streaming);
    latin-1 decoded when raw_bytes (see module docstring), else UTF-8 with replacement."""
    from datasets import load_dataset

    enc = dict(encoding="latin-1") if raw_bytes else dict(encoding="utf-8", encoding_errors="replace")
    return load_dataset("text", data_files=[str(f) for f in files], split="train", streaming=True,
                        keep_linebreaks=True, **enc)


def rows_of(dataset, cfg: DataConfig, describe: str, column: str, separator: str,
            latin1_bytes: bool = False, batch_size: int = ROWS_PER_BATCH) -> Iterator[tuple[list, list]]:
    """(rows of text, bad records) from a datasets (Iterable)Dataset, one per `batch_size` rows
    read (so dataset.state_dict() after a batch is the position after it): checks the column,
    renders translation dicts, appends the separator to every row; latin1_bytes turns the rows of
    a raw_bytes text_file_dataset back into bytes."""
    first = True
    for batch in dataset.iter(batch_size=batch_size):
        if first:
            if column not in batch:
                raise DataError(f"data.text_column: '{column}' is not a column of {describe}; "
                                f"available columns: {sorted(batch)}")
            first = False
        values = batch[column]
        sample = next((v for v in values if v is not None), None)
        if isinstance(sample, dict):
            if cfg.translation is None:
                raise DataError(f"data.translation: column '{column}' of {describe} holds "
                                f"translation pairs {sorted(sample)}; set data.translation to "
                                f"[source, target] language codes, e.g. {sorted(sample)}")
            try:
                rows = format_translation_rows([v for v in values if v is not None],
                                               cfg.translation)
            except KeyError as e:
                raise DataError(f"data.translation: {e.args[0]} in {describe}") from None
            yield rows, []  # pairs end with their own newline: no separator, same as the bundle
            continue
        elif sample is not None and not isinstance(sample, str):
            raise DataError(f"data.text_column: column '{column}' of {describe} holds "
                            f"{type(sample).__name__}, not text; name a string column")
        rows = [v for v in values if v]
        bad = [] if len(rows) == len(values) else [BadRecord(shard_row(dataset, describe), f"'{column}' is "
                                                             f"{'null' if v is None else 'empty'}")
                                                   for v in values if not v]
        if separator:
            rows = [r + separator for r in rows]
        if latin1_bytes:
            rows = [r.encode("latin-1") for r in rows]
        yield rows, bad


def shard_row(dataset, describe: str) -> str:
    """Where a read of `dataset` has got to: its shard and the row in it, from its state_dict()."""
    state = dataset.state_dict() if hasattr(dataset, "state_dict") else None
    while isinstance(state, dict) and "shard_idx" not in state:
        state = state.get("examples_iterable", state.get("ex_iterable"))
    if not isinstance(state, dict):
        return describe
    return f"{describe} shard {state['shard_idx']}, a row before {state['shard_example_idx'] + 1}"
