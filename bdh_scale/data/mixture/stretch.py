"""Stretch lanes over a mixture (data.sources): every source read whole and held out as one source is,
the train parts interleaved into one token stream that Lanes cut into W*B stretches as usual.

Each source is read as stretch lanes read it alone (build.load_stream: tokenized into memory, or a
memory-mapped shard dir, capped at its max_tokens) and its last val_fraction is its held-out set. Its
train part is cut into items: its documents, or for running text pieces of PIECE_TOKENS tokens.

The interleave is drawn here with numpy rather than by datasets.interleave_datasets: the tokens are
already arrays (or memmaps, never copied), and the lanes need one fixed stream they can index
anywhere. It follows interleave_datasets(probabilities=weights, seed=train.seed,
stopping_strategy="all_exhausted"): every draw picks a source with its weight's probability and
takes that source's next item; a source drawn through starts over, and the stream ends when every
source has been drawn through once. No item of any source is left out, and a source whose weight
outruns its size is repeated (oversampled). MixedStream reads the items in that order through an
index of (source, start, length), 24 bytes per item.

The same sources, weights and seed give the same stream, so a resume, which loads only the lanes'
offset, reads on exactly where the run stopped; the lanes' stretches keep the ranks disjoint, as
for one corpus. Every item begins a document of the mixture (doc_start): a lane that passes from
one source to another is not carried across with data.doc_reset.
"""

from __future__ import annotations

import numpy as np

from bdh_scale.data.bundle import DataBundle, measure_bytes_per_token, resolve_doc_reset
from bdh_scale.data.kinds import kind_of
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.mixture.parts import Part, describe, named
from bdh_scale.errors import DataError

PIECE_TOKENS = 2048  # an item of running text (the documents of a source of documents are its items)
DRAWS = 1 << 16      # draws made at a time
MAX_DRAWS = 1 << 25  # items in the mixed stream's index (about 40 bytes each while it is built)


def items(stream: TokenStream) -> np.ndarray:
    """Where the items of `stream` start: its documents (a document cut by the start of the stream
    is an item too), or every PIECE_TOKENS tokens."""
    n = len(stream)
    if not stream.has_documents:
        return np.arange(0, n, PIECE_TOKENS, dtype=np.int64)
    lo, hi = np.searchsorted(stream.doc_starts, [stream.doc_shift, stream.doc_shift + n])
    starts = np.asarray(stream.doc_starts[lo:hi], dtype=np.int64) - stream.doc_shift
    return starts if len(starts) and starts[0] == 0 else np.concatenate([[0], starts]).astype(np.int64)


def draw(counts: list[int], weights: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, item) of every draw: sources drawn by weight until each has given all its items once."""
    rng = np.random.default_rng(seed)
    need, taken, blocks = np.asarray(counts), np.zeros(len(counts), np.int64), []
    while (taken < need).any():
        block = rng.choice(len(counts), size=DRAWS, p=weights)
        seen = taken + np.cumsum(np.eye(len(counts), dtype=np.int64)[block], axis=0)
        done = np.flatnonzero((seen >= need).all(axis=1))
        if len(done):
            block = block[:done[0] + 1]
        blocks.append(block)
        taken = seen[len(block) - 1]
    sources = np.concatenate(blocks)
    item = np.empty_like(sources)
    for s, n in enumerate(counts):  # the k-th draw of a source takes its item k (mod its items: over again)
        mine = sources == s
        item[mine] = np.arange(mine.sum()) % n
    return sources, item


class MixedStream(TokenStream):
    """The items of several token streams in a drawn order, read without copying them; every item
    starts a document."""

    def __init__(self, streams: list[TokenStream], source: np.ndarray, start: np.ndarray, length: np.ndarray):
        offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
        super().__init__([], doc_starts=offsets[:-1])
        self.streams, self.source, self.start, self.offsets = streams, source, start, offsets
        self.dtype = streams[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"read [{start}, {stop}) outside a stream of {len(self)} tokens")
        out = np.empty(stop - start, dtype=np.int64)
        i, pos = int(np.searchsorted(self.offsets, start, side="right")) - 1, start
        while pos < stop:
            take = min(stop, int(self.offsets[i + 1])) - pos
            a = int(self.start[i]) + pos - int(self.offsets[i])
            out[pos - start:pos - start + take] = self.streams[self.source[i]].read(a, a + take)
            pos += take
            i += 1
        return out

    def shares(self) -> list[float]:
        """Each source's share of the tokens."""
        per = np.bincount(self.source, weights=np.diff(self.offsets), minlength=len(self.streams))
        return list(per / per.sum())


def with_items(stream: TokenStream) -> TokenStream:
    """`stream` (a held-out part) with a document start at each of its items, as the train stream has."""
    return TokenStream(list(stream.pieces), items(stream))


def mix_stretch(mixed: list[Part], seed: int):
    """(tokenizer, train stream, {name: (held-out stream, bytes per token)}, description, bad records
    skipped) of a mixture read whole."""
    tokenizer, trains, vals, skipped = None, [], {}, 0
    for p in mixed:
        with named(p):
            tok, stream, what, bad = kind_of(p.cfg.source).tokens(p.cfg)
        if tokenizer is None:
            tokenizer = tok
        elif not tok.same_as(tokenizer):
            raise DataError(f"{p.key}: '{p.name}' ({what}) is tokenized with {tok.name} and '{mixed[0].name}' with "
                            f"{tokenizer.name}; a mixture has one tokenizer: set data.tokenizer to the shard dir's "
                            "tokenizer.json, or re-tokenize the shards with data.tokenizer")
        n_train = int(len(stream) * (1.0 - p.cfg.val_fraction))
        if n_train == 0:
            raise DataError(f"{p.key}: '{p.name}' ({what}) has no tokens to train on ({len(stream):,} in all); point "
                            "it at a corpus with text in it, or lower its val_fraction")
        train, val = stream.view(0, n_train), with_items(stream.view(n_train, len(stream)))
        trains.append(train)
        vals[p.name] = (val, measure_bytes_per_token(tokenizer, val if len(val) else train))
        skipped += bad
    starts = [items(t) for t in trains]
    lengths = [np.diff(np.append(s, len(t))) for s, t in zip(starts, trains)]
    check_draws(mixed, [len(s) for s in starts])
    source, item = draw([len(s) for s in starts], [p.weight for p in mixed], seed)
    start = np.empty(len(source), np.int64)
    length = np.empty(len(source), np.int64)
    for s in range(len(mixed)):
        mine = source == s
        start[mine], length[mine] = starts[s][item[mine]], lengths[s][item[mine]]
    stream = MixedStream(trains, source, start, length)
    return tokenizer, stream, vals, describe(mixed, stream.shares()), skipped


def check_draws(mixed: list[Part], counts: list[int]) -> None:
    """DataError when reading every source through at its weight takes more than MAX_DRAWS draws: the
    mixed stream ends only when its every source has been read, which a large source with a small
    weight makes long."""
    need = [n / p.weight for n, p in zip(counts, mixed)]
    worst = max(range(len(mixed)), key=need.__getitem__)
    if need[worst] > MAX_DRAWS:
        p = mixed[worst]
        raise DataError(f"{p.key}: '{p.name}' has {counts[worst]:,} documents or pieces at weight {p.weight:.3g}, so "
                        f"about {need[worst]:,.0f} draws before it has been read through, more than stretch lanes index "
                        f"({MAX_DRAWS:,}); raise its weight, cap it with its max_tokens, or stream the mixture "
                        "(data.lanes=stream: files or Hub datasets)")


def build_mixed_stretch(cfg, mixed: list[Part], *, batch_size: int, world_size: int, rank: int, seed: int,
                        seq_len: int | None):
    """Stretch lanes over the mixed stream (prefetched as for one corpus), and each source's held-out set."""
    from bdh_scale.data.lanes.stretch import StretchLanes
    from bdh_scale.data.lanes.tokens import concatenate

    tokenizer, stream, by_source, what, skipped = mix_stretch(mixed, seed)
    if rank == 0:  # the weights are per document: what they make of the tokens is worth a line
        print(f"data: {what}", flush=True)
    lanes = StretchLanes(stream, batch_size, world_size, rank, seed=seed, pin_memory=cfg.pin_memory,
                  describe=f"the train parts of the {what}")
    if seq_len is not None:
        lanes.check_fits(seq_len)
    if cfg.prefetch > 0:
        from bdh_scale.data.lanes.prefetch import PrefetchLanes

        lanes = PrefetchLanes(lanes, depth=cfg.prefetch)
    val = concatenate([v for v, _ in by_source.values()])
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val,
                      bytes_per_token=measure_bytes_per_token(tokenizer, val), source=what,
                      n_tokens=len(stream) + len(val), doc_reset=resolve_doc_reset(cfg, True, what),
                      bad_records=skipped, by_source=by_source)
