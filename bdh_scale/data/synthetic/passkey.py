"""A synthetic long-range recall source: `data.source: synthetic:passkey`.

The stream is a sequence of episodes, each a document (so data.doc_reset resets the state
between them):

    <filler> The pass key is 48213. Remember it. <gap of filler> What is the pass key? The pass key is 48213.

The key is a fresh random number per episode; the filler is a random stretch of a corpus
(data.passkey.filler); the gap between the fact and the question is drawn log-uniformly between
data.passkey.min_gap and max_gap tokens. Everything is built in token space, piece by piece, so
the distance and the answer's tokens are exact for any tokenizer. The same seed gives the same
stream.

What a model must learn, and what truncated backpropagation through time can teach: to answer,
the question's tokens must read the fact back from the state. BDH writes every token into rho
(k~ x^T) whatever it learned, so writing needs no gradient across windows; what must be learned
is to encode the fact and the question so that the question's queries match the fact's keys, and
to decode the retrieved values into the digits. Episodes whose gap is shorter than a window put
fact and question in the same window, where the gradient sees both: that teaches encoding and
reading. Whether the skill then works across windows depends on the carried state still holding
the fact: with no forgetting it is buried under every later token; a forgetting gate trained only
inside windows may learn to forget faster than the distances asked. `bdh-analyze recall` measures
it against the distance (analysis/recall.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bdh_scale.data.config import DataConfig
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.data.sources import SourceKind
from bdh_scale.data.sources.reader import filler_tokens
from bdh_scale.data.synthetic.passkey_config import PasskeyConfig
from bdh_scale.data.tokenize.tokenizer import load_tokenizer, token_dtype
from bdh_scale.errors import ConfigError, DataError

SOURCE = "synthetic:passkey"
FACT = (" The pass key is ", ". Remember it. ")
QUESTION = " What is the pass key? The pass key is "
END = ".\n\n"


@dataclass
class Episode:
    tokens: np.ndarray  # the episode's token ids
    answer: slice  # the key's tokens in the answer (after the question)
    gap: int  # tokens of filler between the fact and the question


class Passkey:
    """Builds episodes from a tokenizer and a filler corpus (both tokenized once)."""

    def __init__(self, cfg: PasskeyConfig, tokenizer, filler_tokens: np.ndarray):
        if len(filler_tokens) < cfg.max_gap + cfg.max_lead + 1:
            raise DataError(f"data.passkey.filler: '{cfg.filler}' has {len(filler_tokens):,} tokens, fewer than "
                            f"max_gap + max_lead = {cfg.max_gap + cfg.max_lead}; use a larger corpus or smaller gaps")
        self.cfg, self.tokenizer, self.filler = cfg, tokenizer, filler_tokens
        enc = lambda text: np.asarray(tokenizer.encode(text), dtype=np.int64)  # noqa: E731
        self.fact_before, self.fact_after = enc(FACT[0]), enc(FACT[1])
        self.question, self.end = enc(QUESTION), enc(END)
        self.enc = enc

    def key(self, rng: np.random.Generator) -> str:
        return "".join(str(d) for d in rng.integers(0, 10, self.cfg.digits))

    def filler_slice(self, rng: np.random.Generator, n: int) -> np.ndarray:
        start = int(rng.integers(0, len(self.filler) - n))
        return self.filler[start:start + n].astype(np.int64)

    def episode(self, rng: np.random.Generator, gap: int, lead: int) -> Episode:
        """One episode with exactly `gap` filler tokens between the fact and the question."""
        key = self.enc(self.key(rng))
        head = [self.filler_slice(rng, lead), self.fact_before, key, self.fact_after, self.filler_slice(rng, gap),
                self.question]
        start = sum(len(p) for p in head)
        tokens = np.concatenate(head + [key, self.end])
        return Episode(tokens, slice(start, start + len(key)), gap)

    def to_windows(self, rng: np.random.Generator, e: Episode) -> Episode:
        """The episode with filler after it, up to a whole number of windows (data.passkey.window)."""
        W = self.cfg.window
        pad = -len(e.tokens) % W
        return Episode(np.concatenate([e.tokens, self.filler_slice(rng, pad)]), e.answer, e.gap) if pad else e

    def stream(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, doc_starts, answers): every episode of the training stream, where each begins,
        and which tokens are the key after a question (the targets data.score=answers scores)."""
        rng = np.random.default_rng(self.cfg.seed)
        lo, hi = math.log(self.cfg.min_gap), math.log(self.cfg.max_gap)
        episodes = [self.episode(rng, int(round(math.exp(rng.uniform(lo, hi)))), int(rng.integers(0, self.cfg.max_lead)))
                    for _ in range(self.cfg.episodes)]
        if self.cfg.window:
            episodes = [self.to_windows(rng, e) for e in episodes]
        starts = np.cumsum([0] + [len(e.tokens) for e in episodes[:-1]])
        answers = np.zeros(int(starts[-1]) + len(episodes[-1].tokens), dtype=np.bool_)
        for s, e in zip(starts, episodes):
            answers[s + e.answer.start:s + e.answer.stop] = True
        return np.concatenate([e.tokens for e in episodes]), starts, answers

    def probes(self, gap: int, n: int, lead: int, seed: int) -> list[list[Episode]]:
        """n episodes with the same gap and lead, for measurement, from their own seed (apart from
        the training stream's); grouped by length, so each group stacks into one batch (a BPE
        may spell two keys with different numbers of tokens)."""
        if gap + lead >= len(self.filler):
            raise DataError(f"passkey distance: {gap} tokens of filler (and {lead} before the fact) is more than the "
                            f"{len(self.filler):,} tokens of '{self.cfg.filler}'; ask for shorter distances")
        rng = np.random.default_rng([seed, gap])
        groups: dict[int, list[Episode]] = {}
        for _ in range(n):
            e = self.episode(rng, gap, lead)
            groups.setdefault(len(e.tokens), []).append(e)
        return list(groups.values())


def passkey_for(cfg: DataConfig, tokenizer):
    """The passkey episode builder of a data section (data/synthetic/passkey.py): its settings, and filler
    cut from data.passkey.filler tokenized with `tokenizer`."""
    return Passkey(cfg.passkey, tokenizer, filler_tokens(cfg.passkey.filler, tokenizer))


def passkey_tokens(cfg: DataConfig):
    """(tokenizer, stream, description, bad records) of the source held whole: every episode, each a
    document, its answers marked."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    tokens, doc_starts, answers = passkey_for(cfg, tokenizer).stream()
    pk = cfg.passkey
    return (tokenizer, TokenStream([tokens.astype(token_dtype(tokenizer.vocab_size))], doc_starts, scored=answers),
            f"'{SOURCE}' ({pk.episodes} episodes, gaps {pk.min_gap}-{pk.max_gap} tokens, filler {pk.filler})", 0)


def check_run(cfg) -> None:
    """The longest distance must fit in a held-out row, or no row read carried holds both a fact
    and its question (cfg: the whole RunConfig)."""
    T = cfg.train.eval_seq_len or cfg.train.seq_len
    window = cfg.data.passkey.window
    if window is not None and (window != cfg.train.seq_len or cfg.train.seq_len_schedule or T != window):
        raise ConfigError(f"data.passkey.window: episodes laid out in windows of {window} tokens are read in "
                          f"windows of train.seq_len={cfg.train.seq_len} (eval {T}"
                          + (", with a seq_len_schedule" if cfg.train.seq_len_schedule else "")
                          + f"); set data.passkey.window={cfg.train.seq_len}, one T throughout, or null")
    row = cfg.train.eval_batches * T
    if cfg.data.passkey.max_gap >= row:
        raise ConfigError(f"data.passkey.max_gap: {cfg.data.passkey.max_gap} tokens is longer than the "
                          f"validation rows (train.eval_batches x T = {cfg.train.eval_batches} x {T} = {row} "
                          "tokens), so no held-out row holds a fact and its question; raise train.eval_batches "
                          "or lower data.passkey.max_gap")


KIND = SourceKind(SOURCE, "the synthetic passkey source", claims=lambda source: source == SOURCE,
                  tokens=passkey_tokens, marks_answers=True, check=check_run,
                  align=lambda cfg: cfg.passkey.window or 1)
