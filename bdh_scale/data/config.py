"""The `data:` section of a recipe: where tokens come from and how they are served.

Every field is a plain value so a recipe line `data.source: europarl_en_fr` or a CLI override
`data.tokenizer=runs/bpe/tokenizer.json` maps onto it one to one. Values that cannot work are
refused when the section is built (utils/schema.py), before any file is read, with a message
that names the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from bdh_scale.data.synthetic.mqar_config import MQARConfig
from bdh_scale.data.synthetic.passkey_config import PasskeyConfig
from bdh_scale.utils.quote import short
from bdh_scale.utils.schema import NonEmpty, NonNegInt, PosFloat, PosInt, Range, Section

DEFAULT_SOURCE = "tinyshakespeare"  # what a recipe that names no data reads
SOURCE_HINT = ("give a bundled name ('tinyshakespeare', 'europarl_en_fr'), a local path, a shard dir or a hub "
               "dataset name")


@dataclass
class DataConfig(Section):
    section = "data"

    # where text/tokens come from: a bundled sample ("tinyshakespeare", "europarl_en_fr", or one side of
    # it: "europarl_en", "europarl_fr"), the
    # synthetic recall sources "synthetic:passkey" and "synthetic:mqar" (data.passkey and
    # data.mqar below), a local
    # .txt/.jsonl/.json/.parquet file, directory or glob, a data_prep shard dir (has meta.json),
    # or a Hugging Face Hub dataset name (e.g. "Helsinki-NLP/europarl"); null: "tinyshakespeare",
    # unless data.sources names a mixture (the two exclude each other)
    source: Annotated[str, NonEmpty(SOURCE_HINT)] | None = None
    # a weighted mixture of corpora instead of one (data/mixture/parts.py): a list of
    # {source: ..., weight: ..., name: ...} entries, each also taking the per-source keys of
    # data/mixture/parts.py PER_SOURCE (text_column, hub_config, val_tokens, ...); null: one corpus, data.source
    sources: list | None = None
    # column holding the text in jsonl/parquet/hub rows (text files always use their lines)
    text_column: Annotated[str, NonEmpty("give the column holding the text, e.g. 'text'")] = "text"
    # "bytes" (vocab 256, lossless for any byte string) or a tokenizers .json / run dir saved by
    # data_prep.train_bpe or DataBundle.tokenizer.save; shard dirs carry their own tokenizer
    tokenizer: Annotated[str, NonEmpty("use 'bytes' or a path to a tokenizers .json")] = "bytes"
    # fraction in [0, 1) of the token stream held out at its tail for validation (nanoGPT split);
    # stretch lanes only (stream lanes hold out data.val_split or their first documents)
    val_fraction: Annotated[float, Range(0.0, 1.0)] = 0.1
    # dataset config name for hub sources (e.g. "en-fr" for Helsinki-NLP/europarl); None: default
    hub_config: str | None = None
    # split read from hub sources (e.g. "train"); the val split is still the stream's tail
    hub_split: Annotated[str, NonEmpty("use a split name such as 'train'")] = "train"
    # True: hub sources are read with datasets streaming (nothing downloaded up front)
    streaming: bool = True
    # cap (>= 1) on tokens read from the source, None for all; use it with huge streaming sources
    max_tokens: PosInt | None = None
    # batches (>= 0) prepared ahead in a background thread; 0 serves batches synchronously
    # (stretch lanes; stream lanes keep their own buffer, data.stream_buffer)
    prefetch: NonNegInt = 2
    # how lanes are fed (README, "Data"): stretch (the whole token stream in memory or
    # memory-mapped, cut into W*B contiguous stretches), stream (documents read from a `datasets`
    # stream while training runs, each rank its own share, dealt to its lanes), auto (stream for
    # Hub sources and for local files above data.stream_above_mb, stretch otherwise)
    lanes: Literal["auto", "stretch", "stream"] = "auto"
    # with lanes=auto, local sources whose files total more than this many MB are streamed
    stream_above_mb: PosFloat = 256.0
    # stream lanes: tokenizer processes working ahead of the trainer (0: tokenize in the reader thread)
    workers: NonNegInt = 1
    # stream lanes: tokenized reads (256 rows, or 64 KiB of rows without documents) kept ready ahead
    stream_buffer: PosInt = 8
    # stream lanes: split holding held-out data (e.g. "validation"); null: the first documents
    # of the stream are held out instead (and never trained on)
    val_split: str | None = None
    # stream lanes: held-out tokens read once (cached in the run directory)
    val_tokens: PosInt = 1_048_576
    # reset the model state before every document's first token (batch.py doc_start);
    # null = true for sources made of documents (jsonl/parquet/Hub rows), false otherwise
    doc_reset: bool | None = None
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
    # a record that is not text (a JSON line that does not parse or is not UTF-8, a row without
    # data.text_column or with it null, empty or not a string): stop (the run saves a checkpoint and
    # stops with one line naming the file and row) | skip (dropped with a warning naming them, and
    # counted: data/bad_records in metrics.jsonl and the trackers)
    on_bad_record: Literal["stop", "skip"] = "stop"
    # with skip: more bad records than this, all processes together, stop the run as with stop
    max_bad_records: NonNegInt = 1000
    # remote files and Hub streams: a read or open that fails is tried again up to this many times,
    # by datasets inside a file (datasets.config.STREAMING_READ_MAX_RETRIES / STREAMING_OPEN_MAX_RETRIES)
    # and by the stream lanes from their last complete read (what datasets does not retry, and what
    # it gave up on); then the run saves a checkpoint and stops with one line
    read_retries: NonNegInt = 8
    # seconds before the first retry: datasets waits this long between its own retries
    # (STREAMING_READ_RETRY_INTERVAL / STREAMING_OPEN_RETRY_INTERVAL); the lanes double it each time,
    # up to 60 s (the default 2 s and 8 retries: about 4 minutes for a host to come back)
    retry_wait_s: PosFloat = 2.0
    # extra keyword arguments for datasets.load_dataset of jsonl/parquet/hub sources (e.g.
    # {"revision": "main"}); an empty dict passes nothing
    load_kwargs: dict = field(default_factory=dict)
    # which targets the loss, validation and the metrics score: all (next-token language
    # modelling) or answers (the answers a synthetic source marks: synthetic:mqar's values at
    # the query positions, synthetic:passkey's key after the question)
    score: Literal["all", "answers"] = "all"
    # settings of the synthetic long-range recall source `synthetic:passkey` (data/synthetic/passkey.py);
    # unused by other sources
    passkey: PasskeyConfig = field(default_factory=PasskeyConfig)
    # settings of the synthetic associative-recall source `synthetic:mqar` (data/synthetic/mqar.py);
    # unused by other sources
    mqar: MQARConfig = field(default_factory=MQARConfig)

    def check(self) -> None:
        if self.sources is not None:
            from bdh_scale.data.mixture.parts import check_mixture

            check_mixture(self)  # the entries, and data.source left out
        elif self.source is None:
            self.source = DEFAULT_SOURCE
        t = self.translation
        if t is not None and (len(t) != 2 or not all(isinstance(x, str) and x for x in t) or t[0] == t[1]):
            self.bad("translation", f"{short(t)} is not two distinct language codes; use e.g. ['fr', 'en'] "
                                    "(source first) or null")
