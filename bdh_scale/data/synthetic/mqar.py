"""Multi-query associative recall: `data.source: synthetic:mqar` (Zoology's MQAR, Arora et al. 2023).

An episode (one document) states P (key, value) pairs as adjacent tokens and later asks for each
key again; the answer to a query is its value, predicted at the query's position:

    k1 v1 k2 v2 ... kP vP | filler ... | ... k3 v3 ... k1 v1 ...   (queries in random order)

Keys come from the lower half of the vocabulary (ids 1 .. V/2 - 1, distinct in an episode),
values from the upper half (V/2 .. V-1; data.mqar.values=keys draws them from the keys' ids);
token 0 is the filler unless data.mqar.filler says otherwise (random tokens, or a slice of a
corpus). The layout is counted in windows of the run's T (data.mqar.window): the pairs open a
window, and the queries fill the window `distance` windows later, at random even offsets. Distance 0 puts both in one window (pairs first, queries
after them); distance d >= 1 leaves d - 1 windows of filler between the pairs' window and the
queries' window, so the answer can only come from the state carried across windows. Every episode
is a whole number of windows and lanes read windows, so a window is always one window of one
episode.

The answers are the only targets worth scoring (data.score: answers): every other next token is
filler or a fresh random pair. Chance is 1/P for a model that has learned the values' range
and the episode's values but not which goes with which key, and 2/V for one that knows nothing.

Lanes are generated as they are read (MQARLanes): lane g's episode e is drawn from its own seed
(data.mqar.seed, g, e), and its distance from data.mqar.gap, or from the curriculum
data.mqar.gap_schedule at the optimizer step its first window is read. Everything is a function
of the lanes' shared window count, so a checkpoint holds that count alone and a resume (on any
number of processes) regenerates exactly the same episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from bdh_scale.data.batch import Batch, make_batch
from bdh_scale.data.bundle import DataBundle, measure_bytes_per_token, resolve_doc_reset
from bdh_scale.data.config import DataConfig
from bdh_scale.data.lanes import TokensRead
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.sources import SourceKind
from bdh_scale.data.sources.reader import filler_tokens
from bdh_scale.data.synthetic.mqar_config import MQARConfig
from bdh_scale.data.tokenize.tokenizer import load_tokenizer
from bdh_scale.errors import ConfigError, DataError

SOURCE = "synthetic:mqar"
UNIFORM_BLOCK = 1024  # a lane's distance draws come in blocks: replaying a position needs no per-episode RNG


@dataclass
class Episode:
    tokens: np.ndarray  # (windows * T,) int64
    answers: np.ndarray  # (windows * T,) bool: the token is a value asked for (the target of its query)
    distance: int  # windows from the pairs' window to the queries'

    @property
    def queries(self) -> np.ndarray:
        """Positions of the queries (the tokens whose next token is an answer)."""
        return np.flatnonzero(self.answers) - 1


class MQAR:
    """Builds episodes for a vocabulary and a window (and a filler corpus when asked)."""

    def __init__(self, cfg: MQARConfig, vocab_size: int, window: int, filler_tokens: np.ndarray | None = None):
        P, V, T = cfg.pairs, vocab_size, window
        if P > V // 2 - 1:
            raise DataError(f"data.mqar.pairs: {P} distinct keys do not fit in ids 1 .. {V // 2 - 1} (the lower half of "
                            f"a vocabulary of {V}); use at most {V // 2 - 1} pairs or a larger vocabulary")
        self.cfg, self.V, self.T, self.filler = cfg, V, T, filler_tokens
        self.check_distance(cfg.shortest)
        if cfg.filler == "constant" and cfg.filler_token >= V:
            raise DataError(f"data.mqar.filler_token: {cfg.filler_token} is not a token of a vocabulary of {V}; "
                            f"use an id below {V}")
        if filler_tokens is not None and len(filler_tokens) < T + 1:
            raise DataError(f"data.mqar.filler: '{cfg.filler}' has {len(filler_tokens):,} tokens, fewer than one window "
                            f"of {T}; use a larger corpus")

    @property
    def value_range(self) -> tuple[int, int]:
        """[lo, hi) of the ids a value may take: the upper half, or the keys' ids 1 .. V/2-1."""
        half = self.V // 2
        return (half, self.V) if self.cfg.values == "upper" else (1, half)

    @property
    def value_ids(self) -> int:
        lo, hi = self.value_range
        return hi - lo

    def check_distance(self, distance: int) -> None:
        """A window holds the pairs (2P tokens) and, at distance 0, their queries too (4P)."""
        P, T = self.cfg.pairs, self.T
        need = 4 * P if distance == 0 else 2 * P
        if T < need:
            raise DataError(f"data.mqar.window: a window of {T} tokens cannot hold {P} pairs"
                            + (" and their queries (distance 0 needs 4 * pairs)" if distance == 0 else " (needs 2 * pairs)")
                            + f"; use a window of at least {need} tokens, fewer pairs, or a distance of at least 1")

    # -- one episode -------------------------------------------------------------------------
    def fill(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.cfg.filler == "constant":
            return np.full(n, self.cfg.filler_token, dtype=np.int64)
        if self.cfg.filler == "random":
            return rng.integers(0, self.V, n).astype(np.int64)
        start = int(rng.integers(0, len(self.filler) - n))
        return self.filler[start:start + n].astype(np.int64)

    def episode(self, rng: np.random.Generator, distance: int) -> Episode:
        self.check_distance(distance)
        P, T, half = self.cfg.pairs, self.T, self.V // 2
        tokens = self.fill(rng, (distance + 1) * T)
        keys = rng.choice(np.arange(1, half), P, replace=False)
        values = rng.integers(*self.value_range, P)
        tokens[0:2 * P:2], tokens[1:2 * P:2] = keys, values
        lo = (2 * P if distance == 0 else 0) + distance * T  # the queries' region: the rest of its window
        slots = lo + 2 * np.sort(rng.choice((T * (distance + 1) - lo) // 2, P, replace=False))
        order = rng.permutation(P)
        tokens[slots], tokens[slots + 1] = keys[order], values[order]
        answers = np.zeros(len(tokens), dtype=np.bool_)
        answers[slots + 1] = True
        return Episode(tokens, answers, distance)

    def rng(self, lane: int, episode: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, lane, episode])

    # -- measurement and validation -------------------------------------------------------------
    def probes(self, distance: int, n: int, seed: int) -> list[Episode]:
        """n episodes at one distance from their own seed, apart from the training lanes'."""
        return [self.episode(np.random.default_rng([seed, 7919, distance, i]), distance) for i in range(n)]

    def held_out(self) -> TokenStream:
        """Validation: data.mqar.val_episodes episodes at data.mqar.val_gap, each a document, with
        its answers marked. Every episode has the same length, so held-out rows cut at multiples
        of it (DataBundle.align) begin with an episode."""
        n = self.cfg.val_episodes
        eps = self.probes(self.cfg.held_out_gap, n + 1, seed=self.cfg.seed + 1)
        end = n * len(eps[0].tokens) + 1  # and the first token of one more: the last window's last target
        starts = np.arange(n + 1) * len(eps[0].tokens)
        return TokenStream([np.concatenate([e.tokens for e in eps])[:end]], starts,
                           scored=np.concatenate([e.answers for e in eps])[:end])

    # -- the curriculum ---------------------------------------------------------------------------
    def distance_range(self, step: int) -> tuple[int, int]:
        rng = [(lo, hi) for first, lo, hi in self.cfg.ranges() if first <= step]
        return rng[-1]

    def distance(self, lane: int, episode: int, step: int) -> int:
        """Lane `lane`'s episode `episode` begins at optimizer step `step`: its distance."""
        lo, hi = self.distance_range(step)
        block, i = divmod(episode, UNIFORM_BLOCK)
        u = self._uniforms(lane, block)[i]
        return lo + min(int(u * (hi - lo + 1)), hi - lo)

    @lru_cache(maxsize=4096)
    def _uniforms(self, lane: int, block: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, lane, block, 1]).random(UNIFORM_BLOCK)


class MQARLanes(TokensRead):
    """This rank's lanes of MQAR episodes, generated window by window; the Lanes interface
    (next_batch, check_fits, state_dict, load_state_dict, close)."""

    def __init__(self, mqar: MQAR, batch_size: int, world_size: int = 1, rank: int = 0, windows_per_step: int = 1,
                 score_answers: bool = True, pin_memory: bool = False):
        self.mqar, self.batch_size, self.world_size = mqar, batch_size, world_size
        self.lane_ids = list(range(rank * batch_size, (rank + 1) * batch_size))
        self.windows_per_step, self.score_answers = windows_per_step, score_answers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.windows_read = 0  # every lane's: they advance in lockstep, one window per batch
        self._locate(0)

    # -- where each lane stands ---------------------------------------------------------------
    def _episode(self, lane: int, e: int, start: int) -> tuple[Episode, int]:
        d = self.mqar.distance(lane, e, start // self.windows_per_step)
        return self.mqar.episode(self.mqar.rng(lane, e), d), d + 1

    def _locate(self, w: int) -> None:
        """Each lane's episode that holds window w: replayed from window 0 through the distance
        draws alone (no episode is built on the way)."""
        self.current = []
        for lane in self.lane_ids:
            e, start = 0, 0
            while True:
                length = self.mqar.distance(lane, e, start // self.windows_per_step) + 1
                if start + length > w:
                    break
                e, start = e + 1, start + length
            ep, _ = self._episode(lane, e, start)
            self.current.append([e, start, ep])
        self.windows_read = w

    def _window(self, i: int, T: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Lane i's window w (T + 1 tokens: the next window's first is the last target), its answers,
        and whether an episode begins at its first token."""
        e, start, ep = self.current[i]
        w = self.windows_read
        if w >= start + len(ep.tokens) // T:  # the last window of the episode was read: the next one
            start += len(ep.tokens) // T
            e += 1
            ep, _ = self._episode(self.lane_ids[i], e, start)
            self.current[i] = [e, start, ep]
        a = (w - start) * T
        toks, ans = ep.tokens[a:a + T + 1], ep.answers[a:a + T + 1]
        if len(toks) == T:  # the target after the episode's last token: the next episode's first
            nxt, _ = self._episode(self.lane_ids[i], e + 1, start + len(ep.tokens) // T)
            toks, ans = np.append(toks, nxt.tokens[0]), np.append(ans, nxt.answers[0])
        return toks, ans, w == start

    def check_fits(self, T: int) -> None:
        if T != self.mqar.T:
            raise DataError(f"train.seq_len: {SOURCE} lays its episodes out in windows of {self.mqar.T} tokens "
                            f"(data.mqar.window) and was asked for T = {T}; use one T equal to data.mqar.window "
                            "(no train.seq_len_schedule)")

    def next_batch(self, T: int) -> Batch:
        self.check_fits(T)
        rows = [self._window(i, T) for i in range(self.batch_size)]
        window = np.stack([r[0] for r in rows])
        starts = np.zeros(window.shape, dtype=np.bool_)
        starts[:, 0] = [r[2] for r in rows]
        scored = np.stack([r[1] for r in rows]) if self.score_answers else None
        restarted = self.windows_read == 0
        self.windows_read += 1
        return make_batch(window, restarted, starts, self.pin_memory, scored)

    def state_dict(self) -> dict:
        return {"kind": "mqar", "windows_read": self.windows_read, "n_lanes": self.world_size * self.batch_size,
                "seed": self.mqar.cfg.seed}

    def load_state_dict(self, d: dict) -> None:
        if d.get("kind") != "mqar":
            raise DataError(f"data: the checkpoint was written with {d.get('kind', 'stretch')} lanes, this run reads "
                            f"{SOURCE}; resume with the same data.source")
        if d["seed"] != self.mqar.cfg.seed:
            raise DataError(f"data.mqar.seed: the checkpoint's episodes were drawn with seed {d['seed']}, this run's "
                            f"with {self.mqar.cfg.seed}; resume with the same seed")
        self._locate(int(d["windows_read"]))

    def close(self) -> None:
        """Nothing to release."""


def mqar_for(cfg: DataConfig, tokenizer, window: int | None):
    """The MQAR episode builder of a data section (data/synthetic/mqar.py) for windows of data.mqar.window
    (or `window`, the run's T, when that is null)."""
    m = cfg.mqar
    T = m.window or window
    if T is None:
        raise DataError("data.mqar.window: null takes the run's train.seq_len, and none was given; set data.mqar.window")
    corpus = None if m.filler in ("constant", "random") else filler_tokens(m.filler, tokenizer)
    return MQAR(m, tokenizer.vocab_size, T, corpus)


def build_mqar(cfg: DataConfig, *, batch_size: int, world_size: int, rank: int, seq_len: int | None,
               windows_per_step: int) -> DataBundle:
    """MQAR lanes, generated as they are read, and a held-out set of episodes from their own seed."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    mqar = mqar_for(cfg, tokenizer, seq_len)
    lanes = MQARLanes(mqar, batch_size, world_size, rank, windows_per_step=windows_per_step,
                      score_answers=cfg.score == "answers", pin_memory=cfg.pin_memory)
    if seq_len is not None:
        lanes.check_fits(seq_len)
    val = mqar.held_out()
    m = cfg.mqar
    gaps = (f"distances {m.gap[0]}-{m.gap[1]}" if not m.gap_schedule
            else f"distances by step {[list(e) for e in m.ranges()]}")
    return DataBundle(tokenizer=tokenizer, train=lanes, val=val, bytes_per_token=measure_bytes_per_token(tokenizer, val),
                      source=f"'{SOURCE}' ({m.pairs} pairs, windows of {mqar.T}, {gaps} windows, filler {m.filler})",
                      n_tokens=None, doc_reset=resolve_doc_reset(cfg, True, SOURCE),
                      score_answers=cfg.score == "answers", align=(len(val) - 1) // m.val_episodes)


def check_run(cfg) -> None:
    """MQAR episodes are laid out in windows of one T: the run must read exactly those (cfg: the
    whole RunConfig)."""
    tc, window = cfg.train, cfg.data.mqar.window or cfg.train.seq_len
    if tc.seq_len_schedule or tc.seq_len != window or (tc.eval_seq_len or window) != window:
        raise ConfigError(f"data.mqar.window: {SOURCE} lays its episodes out in windows of {window} tokens, "
                          f"and the run reads train.seq_len={tc.seq_len}, eval_seq_len={tc.eval_seq_len}, "
                          f"seq_len_schedule={tc.seq_len_schedule}; use one T (seq_len = data.mqar.window, "
                          "no schedule)")


KIND = SourceKind(SOURCE, "the synthetic associative-recall source", claims=lambda source: source == SOURCE,
                  build=build_mqar, marks_answers=True, text=False, check=check_run)
