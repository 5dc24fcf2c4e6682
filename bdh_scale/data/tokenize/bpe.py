"""Train a byte-level BPE with the `tokenizers` library.

Byte-level (GPT-2 style): the text's UTF-8 bytes are the 256-symbol base alphabet and merges
are learned on top, so every string is encodable and decode(encode(text)) == text exactly.
No special tokens are added by default: the trainer streams text without document markers,
and the Europarl pair format marks its own boundaries with <FR:...>/<EN:...> tags.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from bdh_scale.data.tokenize.tokenizer import BPETokenizer
from bdh_scale.errors import DataError

MIN_VOCAB = 257  # the 256 byte symbols plus at least one merge


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              special_tokens: list[str] | None = None, show_progress: bool = False,
              name: str = "bpe") -> BPETokenizer:
    """Learn merges on `texts` (an iterator of strings, read once) up to `vocab_size`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(special_tokens or [])
    if vocab_size < MIN_VOCAB + len(specials):
        raise DataError(f"vocab_size: {vocab_size} leaves no room for merges; use at least "
                        f"{MIN_VOCAB + len(specials)} (256 bytes + specials + 1), e.g. 8192")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=specials, show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_valid_unicode(texts), trainer=trainer)
    if tok.get_vocab_size() <= 256 + len(specials):
        raise DataError("data: the BPE training text is empty or too small to learn any merge")
    return BPETokenizer(tok, name=f"{name}{tok.get_vocab_size()}")


def _valid_unicode(texts: Iterable[str]) -> Iterator[str]:
    """Lone surrogates (e.g. undecodable bytes) become U+FFFD, as in BPETokenizer.encode."""
    for t in texts:
        yield BPETokenizer._valid(t)
