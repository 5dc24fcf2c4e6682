"""Stream lanes over a mixture (data.sources): the sources' `datasets` streams interleaved with
datasets.interleave_datasets(probabilities=weights, seed=train.seed, stopping_strategy="all_exhausted"),
read by one DocumentStream and dealt by StreamLanes as if they were one corpus.

Every source is first put in one form, the examples of records.py: {"text", "bad", "where"}, read as
that source alone would be (sources.dataset_source: its files or Hub dataset, text column,
translation pairs; its doc_separator appended to each document). Running text (text files,
translation pairs) is joined into pieces of PIECE_ROWS rows, so that a draw takes a stretch of text
rather than a line; documents stay documents. Every example of the mixture is then one document (its
first token flagged, the state reset there with data.doc_reset). With the byte tokenizer the texts
are kept as the latin-1 spelling of their bytes (rows.py), and turned back into bytes when read.

Held-out sets: each source its own, read as a single source's is (heldout.py: its val_split, or its
first documents up to its val_tokens) and cached in the run directory under held_out/<name>. The
documents held out are filtered out of their source before the interleave, so every draw, and so the
weights, are over training documents only.

Ranks: DocumentStream splits the interleaved stream with datasets.distributed.split_dataset_by_node,
whole shards per rank when every source's shard count allows it, else every W-th example of the same
seeded interleave: either way the ranks' shares are disjoint. Resume: the interleaved dataset's
state_dict() (each source's position and the draws' generator) is the position a checkpoint keeps, as
for one source. An epoch ends once every source has been read through (those that ran out before
start over: oversampled), and every epoch draws the same sequence again.
"""

from __future__ import annotations

from dataclasses import replace

from bdh_scale.data.bundle import DataBundle, measure_bytes_per_token, resolve_doc_reset
from bdh_scale.data.lanes.tokens import concatenate
from bdh_scale.data.mixture.parts import Part, describe, named
from bdh_scale.data.sources.badrecords import BadRecord, BadRecords
from bdh_scale.data.sources.reader import DatasetSource, dataset_source, rows_are_documents
from bdh_scale.data.sources.record_files import record_text
from bdh_scale.data.sources.units import ROWS_PER_UNIT, DocumentStream, digest
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer
from bdh_scale.errors import DataError

PIECE_ROWS = 32  # rows (lines, translation pairs) of running text per example of a mixture


def features():
    from datasets import Features, Value

    return Features({"text": Value("string"), "bad": Value("string"), "where": Value("string")})


def to_examples(cfg, base: DatasetSource, raw: bool):
    """The batched map from what base.open() gives to examples {"text", "bad", "where"} of this source."""
    running = not rows_are_documents(cfg) or base.kind == "text"
    separator = "" if running else cfg.doc_separator
    latin1 = raw and base.kind != "text"  # text files are read as latin-1 already (rows.py)
    spell = ByteTokenizer().encode_bytes

    def texts_of(batch: dict) -> tuple[list, list, list]:
        if base.kind != "hub":
            n = len(batch["text"])
            return batch["text"], batch.get("bad", [None] * n), batch.get("where", [None] * n)
        if cfg.text_column not in batch:
            raise DataError(f"data.text_column: '{cfg.text_column}' is not a column of {base.describe}; available "
                            f"columns: {sorted(batch)}")
        out = [record_text({cfg.text_column: v}, cfg.text_column, cfg.translation) for v in batch[cfg.text_column]]
        kept = [(t, why) for t, why in out if t is not None or why is not None]  # a pair with an empty side: left out
        where = [None if why is None else base.describe for _, why in kept]
        return [t for t, _ in kept], [why for _, why in kept], where

    def convert(batch: dict) -> dict:
        texts, bad, where = texts_of(batch)
        good = [t + separator for t in texts if t is not None]
        if latin1:
            good = [spell(t).decode("latin-1") for t in good]
        if running:
            good = ["".join(good)] if good else []
        broken = [(b, w) for t, b, w in zip(texts, bad, where) if t is None and b is not None]
        return {"text": good + [None] * len(broken), "bad": [None] * len(good) + [b for b, _ in broken],
                "where": [None] * len(good) + [w for _, w in broken]}
    return convert, (PIECE_ROWS if running else ROWS_PER_UNIT)


def source_examples(part: Part, raw: bool, revision: str | None = None) -> DatasetSource:
    """One source of the mixture as a DatasetSource of documents in the examples' form."""
    with named(part):
        base = dataset_source(part.cfg, raw, revision)
    convert, rows = to_examples(part.cfg, base, raw)

    def open_examples(split):
        ds = base.open(split)
        # every column goes (a Hub stream that does not say its columns is asked by reading its first rows)
        columns = ds.column_names if ds.column_names is not None else ds._resolve_features().column_names
        return ds.map(convert, batched=True, batch_size=rows, remove_columns=columns, features=features())
    return DatasetSource(f"'{part.name}' ({base.describe})", True, open_examples,
                         lambda ds, n: example_rows(ds, n, raw), base.revision, base.files, kind="examples")


def example_rows(ds, n: int, raw: bool):
    """(texts, bad records) per `n` examples (bytes with the byte tokenizer)."""
    for batch in ds.iter(batch_size=n):
        texts = [t.encode("latin-1") if raw else t for t in batch["text"] if t is not None]
        yield texts, [BadRecord(w, b) for w, b in zip(batch["where"], batch["bad"]) if b is not None]


def training_only(ds, held: frozenset, raw: bool):
    """`ds` without the documents held out for validation."""
    if not held:
        return ds
    return ds.filter(lambda ex: ex["text"] is None
                     or digest(ex["text"].encode("latin-1") if raw else ex["text"]) not in held)


def mixture(mixed: list[Part], sources: list[DatasetSource], held: list, seed: int, raw: bool) -> DatasetSource:
    """The interleaved training stream of `sources` as one DatasetSource of documents."""
    from datasets import interleave_datasets

    def open_mixture(split):
        parts = [training_only(s.open(None), h.digests, raw) for s, h in zip(sources, held)]
        return interleave_datasets(parts, probabilities=[p.weight for p in mixed], seed=seed,
                                   stopping_strategy="all_exhausted")
    revisions = [s.revision for s in sources]
    return DatasetSource(describe(mixed), True, open_mixture, lambda ds, n: example_rows(ds, n, raw),
                         revisions if any(revisions) else None, tuple(f for s in sources for f in s.files),
                         kind="examples")


def read_held_out_sets(cfg, mixed, sources, tokenizer, pool, held_out_dir) -> list:
    """Each source's held-out set: the run directory's (a resume), else read now."""
    from bdh_scale.data.lanes.heldout import load_held_out, read_held_out

    sets = []
    for p, src in zip(mixed, sources):
        held = load_held_out(held_out_dir, p.cfg, tokenizer, p.name) if held_out_dir is not None else None
        if held is None:
            with named(p):
                held = read_held_out(p.cfg, DocumentStream(src, retries=cfg.read_retries,
                                                           retry_wait_s=cfg.retry_wait_s), tokenizer, pool)
            if p.cfg.val_split is None and len(held.tokens) < p.cfg.val_tokens:
                raise DataError(f"{p.key}: all of '{p.name}' ({len(held.tokens):,} tokens) would be held out for "
                                f"validation (val_tokens {p.cfg.val_tokens:,}); lower its val_tokens, give it a "
                                "val_split, or use a larger corpus")
        sets.append(held)
    return sets


def build_mixed_stream(cfg, mixed: list[Part], *, batch_size: int, world_size: int, rank: int, seed: int,
                       seq_len: int | None, held_out_dir=None):
    """Stream lanes over the mixture, and each source's held-out set (build.build_stream, per source)."""
    from bdh_scale.data.lanes.stream import StreamLanes, before_step_one
    from bdh_scale.data.sources.retry import use_recipe_retries
    from bdh_scale.data.tokenize.tokenizer import load_tokenizer
    from bdh_scale.data.tokenize.workers import TokenizerPool

    tokenizer = load_tokenizer(cfg.tokenizer)
    raw = isinstance(tokenizer, ByteTokenizer)
    use_recipe_retries(cfg.read_retries, cfg.retry_wait_s)
    sources = [source_examples(p, raw) for p in mixed]
    pool = TokenizerPool(tokenizer, cfg.workers)
    with before_step_one(pool):
        held = read_held_out_sets(cfg, mixed, sources, tokenizer, pool, held_out_dir)
        for p, h in zip(mixed, held):
            if seq_len is not None and len(h.tokens) < seq_len + 1:
                raise DataError(f"{p.key}: the held-out data of '{p.name}' has {len(h.tokens):,} tokens, fewer than "
                                f"one window of T+1 = {seq_len + 1}; raise its val_tokens, lower T, or give it a "
                                "larger val_split")
    docs = DocumentStream(mixture(mixed, sources, held, seed, raw), rank, world_size, retries=cfg.read_retries,
                          retry_wait_s=cfg.retry_wait_s)

    def reopen(revisions) -> DocumentStream:  # the Hub commits a resumed run was reading
        again = [source_examples(p, raw, r) for p, r in zip(mixed, revisions or [None] * len(mixed))]
        return replace(docs, source=mixture(mixed, again, held, seed, raw))

    lanes = StreamLanes(docs, pool, batch_size, world_size=world_size, rank=rank, buffer=cfg.stream_buffer,
                        pin_memory=cfg.pin_memory, reopen=reopen,
                        bad_records=BadRecords(cfg.on_bad_record, cfg.max_bad_records))
    with before_step_one(lanes):
        lanes.check_fits(seq_len or 1)
    by_source = {p.name: (h.stream, measure_bytes_per_token(tokenizer, h.stream)) for p, h in zip(mixed, held)}
    val = concatenate([h.stream for h in held])
    what = f"{docs.source.describe} (streamed, {world_size} x {batch_size} lanes)"
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val,
                      bytes_per_token=measure_bytes_per_token(tokenizer, val), source=what, n_tokens=None,
                      doc_reset=resolve_doc_reset(cfg, True, what),
                      held_out={p.name: h for p, h in zip(mixed, held)}, by_source=by_source)

