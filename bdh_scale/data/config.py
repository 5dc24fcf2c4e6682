"""The `data:` section of a recipe: where tokens come from and how they are served.

Every field is a plain value so a recipe line `data.source: europarl_en_fr` or a CLI override
`--data.tokenizer runs/bpe/tokenizer.json` maps onto it one to one. `validate()` rejects values
that cannot work before any file is read, with a message that names the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bdh_scale.data.errors import DataError


@dataclass
class DataConfig:
    # where text/tokens come from: a bundled sample ("tinyshakespeare", "europarl_en_fr"), a local
    # .txt/.jsonl/.json/.parquet file, directory or glob, a data_prep shard dir (has meta.json),
    # or a Hugging Face Hub dataset name (e.g. "Helsinki-NLP/europarl")
    source: str = "tinyshakespeare"
    # column holding the text in jsonl/parquet/hub rows (text files always use their lines)
    text_column: str = "text"
    # "bytes" (vocab 256, lossless for any byte string) or a tokenizers .json / run dir saved by
    # data_prep.train_bpe or DataBundle.tokenizer.save; shard dirs carry their own tokenizer
    tokenizer: str = "bytes"
    # fraction in [0, 1) of the token stream held out at its tail for validation (nanoGPT split)
    val_fraction: float = 0.1
    # dataset config name for hub sources (e.g. "en-fr" for Helsinki-NLP/europarl); None: default
    hub_config: str | None = None
    # split read from hub sources (e.g. "train"); the val split is still the stream's tail
    hub_split: str = "train"
    # True: hub sources are read with datasets streaming (nothing downloaded up front)
    streaming: bool = True
    # cap (>= 1) on tokens read from the source, None for all; use it with huge streaming sources
    max_tokens: int | None = None
    # batches (>= 0) prepared ahead in a background thread; 0 serves batches synchronously
    prefetch: int = 2
    # [src, tgt] language codes, e.g. ["fr", "en"]: render a translation-dict column (as in
    # Helsinki-NLP/europarl) as "<FR:...>\n<EN:...>\n" pairs; None: the column holds plain text
    translation: list[str] | None = None
    # text appended after every row of jsonl/parquet/hub sources (text files keep their
    # newlines, translation pairs end with their own)
    doc_separator: str = "\n\n"
    # True: check the sha256 of every shard of a data_prep shard dir when it is opened
    verify_checksums: bool = True
    # True: batches are put in page-locked memory (CUDA only) so .to(device, non_blocking=True)
    # overlaps the copy with compute; ignored without CUDA
    pin_memory: bool = False
    # extra keyword arguments for datasets.load_dataset of jsonl/parquet/hub sources (e.g.
    # {"revision": "main"}); an empty dict passes nothing
    load_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise DataError("data.<field>: <what is wrong>; <what would be right>")."""
        if not isinstance(self.source, str) or not self.source.strip():
            raise DataError("data.source: empty; give a bundled name ('tinyshakespeare', "
                            "'europarl_en_fr'), a local path, a shard dir or a hub dataset name")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise DataError("data.text_column: empty; give the column holding the text, e.g. 'text'")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise DataError("data.tokenizer: empty; use 'bytes' or a path to a tokenizers .json")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction: {self.val_fraction!r} is outside [0, 1); "
                            "use e.g. 0.1 (last 10% of the stream held out)")
        if not self.hub_split:
            raise DataError("data.hub_split: empty; use a split name such as 'train'")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int)
                                            or isinstance(self.max_tokens, bool)
                                            or self.max_tokens < 1):
            raise DataError(f"data.max_tokens: {self.max_tokens!r} is not a positive integer; "
                            "use null for no cap or e.g. 100_000_000")
        if not isinstance(self.prefetch, int) or isinstance(self.prefetch, bool) or self.prefetch < 0:
            raise DataError(f"data.prefetch: {self.prefetch!r} is not an integer >= 0; "
                            "use 0 (no background thread) or e.g. 2")
        if self.translation is not None:
            t = self.translation
            if (not isinstance(t, (list, tuple)) or len(t) != 2
                    or not all(isinstance(x, str) and x for x in t) or t[0] == t[1]):
                raise DataError(f"data.translation: {t!r} is not two distinct language codes; "
                                "use e.g. ['fr', 'en'] (source first) or null")
        if not isinstance(self.doc_separator, str):
            raise DataError(f"data.doc_separator: {self.doc_separator!r} is not a string; "
                            "use e.g. '\\n\\n' or ''")
        if not isinstance(self.load_kwargs, dict):
            raise DataError(f"data.load_kwargs: {self.load_kwargs!r} is not a mapping; use {{}}")
