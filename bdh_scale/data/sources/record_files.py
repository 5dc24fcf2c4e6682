"""Files of records (JSON Lines, JSON arrays, Parquet), local or remote, read one record at a time,
so that a record that is not text is found and named instead of failing the file it is in.

datasets' json builder parses a file in blocks of 10 MB with pyarrow: one broken line fails the
block, with an error that names neither the file nor the line. Here every record is parsed on its
own (json.loads of each line; pyarrow's Parquet reader, row group by row group, for the text
column only), and each comes out as one example of a `datasets` IterableDataset
(`IterableDataset.from_generator`, one shard per file):

    {"text": the record's text or None, "bad": why it is not text, "where": "'<file>' line 400"}

so the stream keeps what the lanes rely on: `split_dataset_by_node` (whole files per rank),
`state_dict()` / `load_state_dict()` (exact resume; a resume re-parses the file up to its record),
and, for remote files (http://, https://, hf://), datasets' own `xopen`: the same fsspec file
and the same retries of a dropped read or open (datasets.config.STREAMING_READ_MAX_RETRIES,
STREAMING_OPEN_MAX_RETRIES and their intervals) as its builders use when they stream.

`where` (of a bad record only) names the file and the line number in a JSON Lines file (blank
lines count, so an editor goes straight to it), the item number in a file holding one JSON
array, the row number in a Parquet file. A
translation dict (data.translation) is rendered as pair text here; a pair with an empty side is
left out quietly, as the bundled Europarl does (its release keeps empty lines for alignment).
A file that cannot be read at all (gone, not Parquet, a JSON array that does not parse) is a
RecordFileError naming it.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Iterator

from bdh_scale.data.sources.badrecords import BadRecord
from bdh_scale.data.sources.retry import describe_error, is_network_error
from bdh_scale.data.sources.translation import format_pair

KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
FORMATS = {"json": "JSON Lines or a JSON array", "parquet": "Parquet"}
PARQUET_BATCH = 1024  # rows per Parquet read
CHUNK = 1 << 20  # bytes per JSON read


class RecordFileError(OSError):
    """A file of records that could not be read at all: gone, unreadable, not of its format."""

    def __init__(self, path: str, what: str):
        super().__init__(f"'{path}' {what}")
        self.path, self.what = path, what


class HostError(ConnectionError):
    """A remote file whose host stopped answering (after datasets' own retries): retried by the stream."""

    def __init__(self, path: str, error: BaseException):
        super().__init__(f"'{path}': {describe_error(error)}")
        self.path = path


def record_kind(path: str) -> str | None:
    return KINDS.get(Path(path.split("?")[0]).suffix.lower())


def _open(path: str):
    from datasets.utils.file_utils import xopen  # local paths: open(); remote: fsspec with datasets' retries

    return xopen(path, "rb")


def record_text(record, column: str, translation) -> tuple[str | None, str | None]:
    """(text, None), (None, why it is bad), or (None, None) for a pair left out quietly."""
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    if column not in record:
        return None, f"no '{column}' (its fields: {', '.join(sorted(record)[:8]) or 'none'})"
    value = record[column]
    if translation is not None:
        src, tgt = translation
        if not isinstance(value, dict) or src not in value or tgt not in value:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            return None, f"'{column}' is not a translation pair with '{src}' and '{tgt}' (it has {have})"
        return format_pair(src, value[src] or "", tgt, value[tgt] or ""), None
    if value is None:
        return None, f"'{column}' is null"
    if isinstance(value, dict):
        return None, f"'{column}' holds a translation pair {sorted(value)}, not text (set data.translation)"
    if not isinstance(value, str):
        return None, f"'{column}' is a {type(value).__name__}, not text"
    if not value:
        return None, f"'{column}' is empty"
    return value, None


def _json_records(f) -> Iterator[tuple[str, object, str | None]]:
    """(place, record, None) or (place, None, why) of a JSON Lines file, or of a file holding one
    array; the place is "line 7" or "item 7"."""
    first = f.read(CHUNK)
    if first.lstrip()[:1] == b"[":
        try:
            items = json.loads(first + f.read())
        except ValueError as e:
            raise ValueError(f"is not a JSON array ({str(e)[:200]})") from None
        yield from ((f"item {n}", item, None) for n, item in enumerate(items, 1))
        return
    for n, line in enumerate(_lines(first, f), 1):
        if not line.strip():
            continue  # blank lines are no records
        try:
            yield f"line {n}", json.loads(line), None
        except UnicodeDecodeError as e:
            yield f"line {n}", None, f"not UTF-8 (byte {e.start} of the line)"
        except ValueError as e:
            yield f"line {n}", None, f"not JSON ({str(e)[:200]})"


def _lines(first: bytes, f) -> Iterator[bytes]:
    """The lines of a file read in chunks, `first` being its first: split at b"\n" only (JSON
    allows U+2028 and other line breaks inside a string)."""
    rest, chunk = b"", first
    while chunk:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
        chunk = f.read(CHUNK)
    if rest:
        yield rest


def _parquet_records(f, column: str) -> Iterator[tuple[str, object, str | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(f)
    except Exception as e:  # pyarrow: ArrowInvalid and kin
        raise ValueError(f"is not a Parquet file ({type(e).__name__}: {str(e)[:200]})") from None
    if column not in table.schema_arrow.names:
        fields = ", ".join(table.schema_arrow.names[:8])
        for n in range(1, table.metadata.num_rows + 1):
            yield f"row {n}", None, f"no '{column}' (the file's columns: {fields})"
        return
    n = 0
    for batch in table.iter_batches(batch_size=PARQUET_BATCH, columns=[column]):
        for value in batch.column(0).to_pylist():
            n += 1
            yield f"row {n}", {column: value}, None


def _generate(files: list[str], column: str, translation: tuple | None) -> Iterator[dict]:
    """The examples of `files` (one shard of the dataset), in order."""
    for path in files:
        try:
            with _open(path) as f:
                records = _json_records(f) if record_kind(path) == "json" else _parquet_records(f, column)
                for place, record, bad in records:
                    text = None
                    if bad is None:
                        text, bad = record_text(record, column, translation)
                    if text is not None or bad is not None:
                        yield {"text": text, "bad": bad, "where": None if bad is None else f"'{path}' {place}"}
        except FileNotFoundError as e:
            if is_network_error(e):
                raise HostError(path, e.__cause__) from e
            raise RecordFileError(path, "vanished (no such file)") from None
        except PermissionError:
            raise RecordFileError(path, "cannot be read (permission denied)") from None
        except (ValueError, IsADirectoryError) as e:  # ours say "is not ...", pyarrow's what broke
            raise RecordFileError(path, str(e) if str(e).startswith("is not") else
                                  f"could not be read ({describe_error(e)})") from None
        except Exception as e:
            if is_network_error(e) and not isinstance(e, HostError):
                raise HostError(path, e) from e
            raise


def record_dataset(files: list[str], column: str, translation=None):
    """The records of `files` as a streaming `datasets` IterableDataset, one shard per file."""
    from datasets import Features, IterableDataset, Value

    features = Features({"text": Value("string"), "bad": Value("string"), "where": Value("string")})
    return IterableDataset.from_generator(_generate, features=features, gen_kwargs={
        "files": list(files), "column": column, "translation": tuple(translation) if translation else None})


def check_first_records(path: str, column: str, translation, describe: str, n: int = 256) -> None:
    """DataError when the first `n` records of the first file hold no text at all: data.text_column
    (or data.translation) does not fit the data, which is no matter of a few bad records."""
    from bdh_scale.errors import DataError

    try:
        first = list(islice(_generate([path], column, tuple(translation) if translation else None), n))
    except OSError as e:
        raise DataError(f"data.source: {e}") from None
    if not first or any(r["text"] is not None for r in first):
        return
    if all(r["bad"].startswith(f"no '{column}'") for r in first):
        with _open(path) as f:
            if record_kind(path) == "json":
                fields = next((sorted(r) for _, r, _ in _json_records(f) if isinstance(r, dict)), [])
            else:
                import pyarrow.parquet as pq

                fields = pq.ParquetFile(f).schema_arrow.names
        raise DataError(f"data.text_column: '{column}' is not a column of {describe} (none of its first "
                        f"{len(first)} records has it); available columns: {fields}")
    fix = "data.translation" if translation else "data.text_column"
    raise DataError(f"{fix}: the first {len(first)} records of {describe} hold no text, e.g. "
                    f"{first[0]['where']}: {first[0]['bad']}; name the field that holds "
                    "the text" + (" and the pair's languages" if translation else ""))


def record_rows(dataset, separator: str, batch_size: int) -> Iterator[tuple[list[str], list[BadRecord]]]:
    """(texts, bad records) per `batch_size` examples of a record_dataset (so dataset.state_dict()
    after a batch is the position after it); the separator appended to every text."""
    for batch in dataset.iter(batch_size=batch_size):
        texts = [t + separator for t in batch["text"] if t is not None]
        bad = [BadRecord(at, why) for at, why in zip(batch["where"], batch["bad"]) if why is not None]
        yield texts, bad
