"""Where text comes from: bundled samples, local files, or the Hugging Face Hub, all through
`datasets`.

`open_text_source(cfg, raw_bytes)` returns a TextSource whose `batches()` yields lists of rows
in corpus order; the caller tokenizes them (see build.py). Rows are str, except text files read
with raw_bytes=True (for the byte tokenizer), whose rows are the files' exact bytes.
Pre-tokenized data_prep shard dirs skip this module entirely (shards.py).

Local files use datasets' packaged builders with streaming=True (no Arrow cache is written):
  .txt/.text -> "text", one row per line with its line break kept, so the rows concatenate back
               to the file. Arrow strings must be valid UTF-8, so for the byte tokenizer the
               files are decoded as latin-1 (one code point per byte, lossless) and turned back
               into the original bytes: invalid UTF-8 reaches the byte tokenizer unchanged.
               Otherwise they are decoded as UTF-8 with errors="replace" (U+FFFD). The builder
               opens files in text mode, which turns "\\r\\n" and "\\r" line endings into "\\n".
  .jsonl/.json -> "json", .parquet -> "parquet": one row per record, data.text_column read and
               data.doc_separator appended after each row so documents do not run together.
               A column of translation dicts (data.translation) is rendered as pair text
               instead, with no separator: the same stream as the bundled europarl_en_fr.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Callable, Iterator

from bdh_scale.data.config import DataConfig
from bdh_scale.data.errors import DataError
from bdh_scale.data.translation import format_pairs, format_translation_rows

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED = {
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "europarl_en_fr": "europarl/fr-en/{fr,en}.txt (formatted as <FR:...>/<EN:...> pairs)",
}
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet"}
ROWS_PER_BATCH = 1024
OFFLINE_ALTERNATIVES = (
    "a local .txt/.jsonl/.parquet file, directory or glob; a shard dir made by "
    "`python -m data_prep.tokenize`; or a bundled sample: " + ", ".join(map(repr, BUNDLED)))


@dataclass
class TextSource:
    describe: str                                # human-readable origin, used in messages
    batches: Callable[[], Iterator[list]]        # fresh iterator of row batches, corpus order


def looks_like_path(source: str) -> bool:
    """A string that can only mean a local path (so a miss is "no such file", not a hub name)."""
    return (source.startswith(("/", "./", "../", "~")) or any(c in source for c in "*?[")
            or Path(source).suffix.lower() in BUILDERS or os.path.exists(source))


def local_files(source: str) -> list[str]:
    """Files named by a path, directory (searched recursively) or glob; DataError if none."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if Path(f).suffix.lower() in BUILDERS and os.path.isfile(f))
        if not files:
            raise DataError(f"data.source: directory '{source}' holds no "
                            f"{'/'.join(BUILDERS)} files and no meta.json (shard dir)")
        return files
    if any(c in path for c in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"data.source: glob '{source}' matches no files")
        return files
    if not os.path.isfile(path):
        raise DataError(f"data.source: no such file or directory: '{source}'")
    return [path]


def builder_for(files: list[str], source: str) -> str:
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds:
        bad = next(f for f in files if Path(f).suffix.lower() not in BUILDERS)
        raise DataError(f"data.source: '{bad}' has an unknown extension; "
                        f"use one of {', '.join(BUILDERS)}")
    if len(kinds) > 1:
        raise DataError(f"data.source: '{source}' mixes {sorted(kinds)} files; "
                        "point it at one kind (e.g. a glob '*.jsonl')")
    return kinds.pop()


def text_file_dataset(files, raw_bytes: bool = False):
    """Lines of text files, line breaks kept, through datasets' "text" builder (streaming);
    latin-1 decoded when raw_bytes (see module docstring), else UTF-8 with replacement."""
    from datasets import load_dataset

    enc = dict(encoding="latin-1") if raw_bytes else dict(encoding="utf-8", encoding_errors="replace")
    return load_dataset("text", data_files=[str(f) for f in files], split="train", streaming=True,
                        keep_linebreaks=True, **enc)


def rows_of(dataset, cfg: DataConfig, describe: str, column: str, separator: str,
            latin1_bytes: bool = False) -> Iterator[list]:
    """Batches of text from a datasets (Iterable)Dataset: checks the column, renders
    translation dicts, appends the separator to every row; latin1_bytes turns the rows of a
    raw_bytes text_file_dataset back into bytes."""
    first = True
    for batch in dataset.iter(batch_size=ROWS_PER_BATCH):
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
            yield rows  # pairs end with their own newline: no separator, same as the bundle
            continue
        elif sample is not None and not isinstance(sample, str):
            raise DataError(f"data.text_column: column '{column}' of {describe} holds "
                            f"{type(sample).__name__}, not text; name a string column")
        else:
            rows = [v for v in values if v]
        if separator:
            rows = [r + separator for r in rows]
        if latin1_bytes:
            rows = [r.encode("latin-1") for r in rows]
        yield rows


def parallel_text(src_path, tgt_path, langs=("fr", "en"),
                  counts: dict | None = None) -> Iterator[list[str]]:
    """Two line-aligned files (Europarl release layout: line i of one translates line i of the
    other) as batches of "<FR:...>\\n<EN:...>\\n" pair text (translation.py); `langs` names the
    languages of the first and second file. `counts`, if given, receives "lines" (aligned
    lines read) and "pairs" (pairs kept, i.e. both sides non-empty)."""
    for path in (src_path, tgt_path):
        if not os.path.isfile(path):
            raise DataError(f"data.source: no such file: '{path}'")
    src = text_file_dataset([src_path]).iter(batch_size=ROWS_PER_BATCH)
    tgt = text_file_dataset([tgt_path]).iter(batch_size=ROWS_PER_BATCH)
    n_src = n_tgt = 0
    for bs, bt in zip_longest(src, tgt):
        n_src += len(bs["text"]) if bs else 0
        n_tgt += len(bt["text"]) if bt else 0
        if bs is None or bt is None or len(bs["text"]) != len(bt["text"]):
            n_src += sum(len(b["text"]) for b in src)
            n_tgt += sum(len(b["text"]) for b in tgt)
            raise DataError(f"data.source: '{src_path}' has {n_src} lines but '{tgt_path}' has "
                            f"{n_tgt}; the two sides of a parallel corpus must be line-aligned")
        texts = list(format_pairs(langs[0], langs[1], zip(bs["text"], bt["text"])))
        if counts is not None:
            counts["lines"] = n_src
            counts["pairs"] = counts.get("pairs", 0) + len(texts)
        yield texts


def open_text_source(cfg: DataConfig, raw_bytes: bool = False) -> TextSource:
    """Resolve data.source (not a shard dir) to a TextSource; raw_bytes: text files yield
    their exact bytes (for the byte tokenizer)."""
    source = cfg.source

    def lines_of(files, describe):
        return lambda: rows_of(text_file_dataset(files, raw_bytes), cfg, describe, "text", "",
                               latin1_bytes=raw_bytes)

    if source == "tinyshakespeare":
        path = BUNDLED_DIR / "tinyshakespeare" / "input.txt"
        return TextSource("bundled 'tinyshakespeare'", lines_of([path], "tinyshakespeare"))
    if source == "europarl_en_fr":
        d = BUNDLED_DIR / "europarl" / "fr-en"
        return TextSource("bundled 'europarl_en_fr'",
                          lambda: parallel_text(d / "fr.txt", d / "en.txt"))
    if looks_like_path(source):
        files = local_files(source)
        builder = builder_for(files, source)
        describe = f"'{source}'"
        if builder == "text":
            return TextSource(describe, lines_of(files, describe))

        def batches():
            from datasets import load_dataset

            ds = load_dataset(builder, data_files=files, split="train", streaming=True,
                              **cfg.load_kwargs)
            return rows_of(ds, cfg, describe, cfg.text_column, cfg.doc_separator)
        return TextSource(describe, batches)
    from bdh_scale.data.hub import hub_batches

    return TextSource(f"hub dataset '{source}'", lambda: hub_batches(cfg))
