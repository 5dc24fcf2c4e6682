"""DataBundle: everything the training loop needs from the data side (the tokenizer, this rank's
lanes, the held-out windows), and the two facts every source's bundle states the same way: where
the state resets (data.doc_reset) and how many bytes a token stands for."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from bdh_scale.data.batch import Batch, make_batch
from bdh_scale.data.config import DataConfig
from bdh_scale.data.lanes import Lanes
from bdh_scale.data.lanes.heldout import HeldOut, save_held_out
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer
from bdh_scale.errors import DataError

BYTES_PER_TOKEN_SAMPLE = 4_000_000  # val tokens decoded to measure bytes/token (BPE only)


@dataclass
class DataBundle:
    """Everything the training loop needs from the data side."""

    tokenizer: object          # ByteTokenizer | BPETokenizer (encode/decode/vocab_size/save)
    train: Lanes               # this rank's lanes (PrefetchLanes when data.prefetch > 0, StreamLanes)
    val: TokenStream           # the held-out tail of the stream, or a stream's held-out set
    bytes_per_token: float     # UTF-8 bytes per token over the val split (1.0 for bytes)
    source: str                # where the tokens came from, for logs
    n_tokens: int | None       # tokens in the whole stream (train + val); None for a stream
    doc_reset: bool = False    # data.doc_reset resolved: reset the state at document starts
    bad_records: int = 0       # stretch lanes: bad records skipped while reading the source (every rank alike)
    held_out: HeldOut | None = None  # stream lanes: the held-out set, to cache in the run dir
    score_answers: bool = False  # data.score: answers: only the answers the source marks are targets
    align: int = 1             # held-out rows begin at multiples of this (synthetic:mqar: one episode)
    # a mixture (data.sources): name -> (that source's held-out stream, its bytes per token); `val` is
    # then all of them one after the other, and held_out (stream lanes) name -> HeldOut
    by_source: dict = field(default_factory=dict)

    @property
    def val_key(self) -> str:
        """The setting that sizes the held-out data: stream lanes hold out data.val_tokens."""
        return "data.val_tokens" if self.held_out is not None else "data.val_fraction"

    def save_held_out(self, run_dir) -> None:
        """Stream lanes: keep the held-out set in the run directory (main process), so that a
        resumed run validates on, and holds out, exactly the same documents (a mixture: each
        source's in held_out/<name>)."""
        if isinstance(self.held_out, dict):
            for name, held in self.held_out.items():
                save_held_out(held, run_dir, name)
        elif self.held_out is not None:
            save_held_out(self.held_out, run_dir)

    def source_bundles(self) -> dict[str, "DataBundle"]:
        """A mixture: name -> this bundle validating on that source's held-out set alone ({} for one source)."""
        return {name: replace(self, val=val, bytes_per_token=bpt, by_source={})
                for name, (val, bpt) in self.by_source.items()}

    def val_layout(self, T: int, rows: int, max_batches: int | None = None) -> tuple[int, int, int]:
        """(rows, windows per row, tokens per row's stretch) that val_batches will read: fewer rows
        than asked when the held-out data is short, and at most what a row holds of windows."""
        n = len(self.val)
        if n < T + 1:
            raise DataError(f"{self.val_key}: the held-out data has {n:,} tokens, fewer than one "
                            f"window of T+1 = {T + 1}; raise {self.val_key} or lower T")
        if self.align == 1:
            rows = max(1, min(rows, n // (T + 1)))
            stretch = n // rows
            n_batches = (stretch - 1) // T
        else:  # rows of whole episodes: a row's last window reads the next row's first token as its last target
            rows = max(1, min(rows, (n - 1) // self.align))
            stretch = (n - 1) // rows // self.align * self.align
            n_batches = stretch // T
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        return rows, n_batches, stretch

    def val_batches(self, T: int, rows: int, max_batches: int | None = None) -> Iterator[Batch]:
        """Fixed held-out windows, identical on every call and on every rank.

        The val stream is laid out like the train lanes: min(rows, tokens // (T+1)) contiguous
        stretches, and batch k holds window k (tokens [k*T, k*T+T+1)) of every stretch. Batch
        k+1 therefore continues batch k row by row: the loop may reset the model state per
        batch (plain windows) or reset it once and carry it (as in training). Yields Batch
        (batch.py): restarted is True on the first batch only, doc_start where held-out
        documents begin.
        """
        rows, n_batches, stretch = self.val_layout(T, rows, max_batches)
        row_starts = np.arange(rows) * stretch
        for k in range(n_batches):
            starts = row_starts + k * T
            w = np.stack([self.val.read(s, s + T + 1) for s in starts])
            scored = self.val.scored_mask(starts, T + 1) if self.score_answers else None
            yield make_batch(w, k == 0, self.val.doc_mask(starts, T + 1), scored=scored)

    def close(self) -> None:
        """Stop the prefetch or reader thread and the tokenizer processes, if any."""
        self.train.close()


def resolve_doc_reset(cfg: DataConfig, has_documents: bool, describe: str) -> bool:
    """data.doc_reset: null means "where the source has documents"; true needs documents."""
    if cfg.doc_reset is None:
        return has_documents
    if cfg.doc_reset and not has_documents:
        raise DataError(f"data.doc_reset: {describe} has no document boundaries (text files and the "
                        "bundled corpora are one running text); set data.doc_reset=false or use a "
                        "jsonl/parquet/hub source")
    return cfg.doc_reset


def measure_bytes_per_token(tokenizer, stream: TokenStream) -> float:
    """UTF-8 bytes per token, decoding (up to a sample of) the stream in chunks."""
    if isinstance(tokenizer, ByteTokenizer) or len(stream) == 0:
        return 1.0
    n = min(len(stream), BYTES_PER_TOKEN_SAMPLE)
    chunk, total = 1 << 18, 0
    for a in range(0, n, chunk):
        ids = stream.read(a, min(n, a + chunk))
        total += len(tokenizer.decode(ids.tolist()).encode("utf-8"))
    return total / n
