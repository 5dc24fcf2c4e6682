"""Tokenizers: raw bytes (the BDH reference setup) or a byte-level BPE from `tokenizers`.

Both expose the same small interface the trainer needs:
    encode(str) -> list[int], decode(list[int]) -> str, vocab_size, name, save(dir),
    encode_rows(list[str]) -> np.ndarray (the fast path used to build token streams).
Both are saved as `<dir>/tokenizer.json`, a `tokenizers` file that other tools read too
(`tokenizers.Tokenizer.from_file`, transformers' `PreTrainedTokenizerFast`), so a run dir, a
model directory or a shard dir always carries the exact tokenizer its tokens were made with.
The byte tokenizer's file is a byte-level BPE without merges whose 256 symbols have the ids of
their bytes: ids = byte values, for this package and for any other reader. `load_tokenizer` reads
either kind back, and the marker file older runs wrote ({"type": "bdh_scale.bytes"}) as well.

Non-UTF-8 input: for the byte tokenizer text files arrive as their raw bytes (sources.py), and
encode_rows takes bytes rows as they are: bytes in, bytes out; decode uses errors="replace".
A str holding lone surrogates (Python's errors="surrogateescape" carrier of undecodable bytes)
is encoded back to those bytes too. The BPE works on valid Unicode only, so such characters
become U+FFFD before encoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bdh_scale.errors import DataError
from bdh_scale.utils.atomic import write_text_atomic
from bdh_scale.utils.bounded import MAX_TOKENIZER_BYTES, read_json

TOKENIZER_FILE = "tokenizer.json"
_BYTES_MARKER = "bdh_scale.bytes"  # the byte tokenizer's file before it was a tokenizers file


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: uint8 for bytes (half the memory and disk of
    uint16), uint16 for BPE vocabularies up to 65,536, uint32 beyond."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> the printable character that stands for it in byte-level BPE vocabularies (GPT-2's
    table, which `tokenizers`' ByteLevel pre-tokenizer and decoder use): printable Latin-1 bytes
    stand for themselves, the other 68 take the code points from 256 upwards, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def byte_level_tokenizer():
    """The byte tokenizer as a `tokenizers.Tokenizer`: byte-level BPE with no merges, the symbol of
    byte b has id b. Encodes any text to its UTF-8 bytes and decodes them back (invalid UTF-8 as
    U+FFFD, as ByteTokenizer.decode)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: b for b, symbol in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no split into words, which could only cost time (there is nothing to merge)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def is_byte_level(tok) -> bool:
    """Whether a `tokenizers.Tokenizer` is the byte tokenizer's file (as this package writes it, read
    back by any version of `tokenizers`)."""
    ours, theirs = json.loads(byte_level_tokenizer().to_str()), json.loads(tok.to_str())
    return all(ours.get(k) == theirs.get(k) for k in ("normalizer", "pre_tokenizer", "model", "decoder", "added_tokens"))


class ByteTokenizer:
    """Token = one UTF-8 byte (vocab 256); lossless for any byte string."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(self.encode_bytes(text))

    def encode_bytes(self, text: str) -> bytes:
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # a surrogate that does not stand for a byte
            return text.encode("utf-8", errors="surrogatepass")

    def encode_rows(self, rows: list) -> np.ndarray:
        """Rows of str (UTF-8 encoded) or bytes (taken as they are) -> uint8 ids."""
        data = b"".join(r if isinstance(r, bytes) else self.encode_bytes(r) for r in rows)
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        return bytes(np.asarray(ids, dtype=np.int64).astype(np.uint8))

    def save(self, directory) -> Path:
        return save_tokenizers_file(byte_level_tokenizer(), directory)

    def same_as(self, other) -> bool:
        return isinstance(other, ByteTokenizer)


class BPETokenizer:
    """A `tokenizers.Tokenizer` (byte-level BPE from data_prep.train_bpe, or any saved one)."""

    def __init__(self, tokenizer, name: str = "bpe"):
        self.tok = tokenizer
        self.name = name

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def _valid(text: str) -> str:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:  # lone surrogates (e.g. undecodable bytes) -> U+FFFD
            return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(self._valid(text), add_special_tokens=False).ids

    def encode_rows(self, rows: list[str]) -> np.ndarray:
        # encode_batch_fast (tokenizers >= 0.20) skips character offsets we do not use
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        encs = encode([self._valid(r) for r in rows], add_special_tokens=False)
        dtype = token_dtype(self.vocab_size)
        if not encs:
            return np.zeros(0, dtype=dtype)
        return np.concatenate([np.asarray(e.ids, dtype=dtype) for e in encs])

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory) -> Path:
        return save_tokenizers_file(self.tok, directory)

    def same_as(self, other) -> bool:
        return isinstance(other, BPETokenizer) and self.tok.to_str() == other.tok.to_str()


class StreamDecoder:
    """The text of a growing sequence of token ids, piece by piece: push(ids) returns the text the
    new ids add, so that generated text can be printed as it is drawn. A byte-level token may end
    inside a UTF-8 character; its text waits until the character is complete (U+FFFD at the end of
    a decode means "incomplete"), and flush() returns whatever is left at the end.

    Each push decodes a few tokens before the new ones with them, so a tokenizer whose decoding of
    a token depends on its neighbours (e.g. leading-space markers) still gives the right text."""

    def __init__(self, tokenizer, context=()):
        self.tokenizer = tokenizer
        self.ids = [int(i) for i in context]
        self.start = max(len(self.ids) - 4, 0)  # decoded along with the new ids, for their context
        self.done = len(self.ids)  # ids up to here have been returned as text

    def _new_text(self) -> tuple[str, str]:
        before = self.tokenizer.decode(self.ids[self.start:self.done])
        return before, self.tokenizer.decode(self.ids[self.start:])

    def push(self, ids) -> str:
        self.ids.extend(int(i) for i in ids)
        before, text = self._new_text()
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # nothing yet, or a character still incomplete
        self.start, self.done = self.done, len(self.ids)
        return text[len(before):]

    def flush(self) -> str:
        before, text = self._new_text()
        self.start = self.done = len(self.ids)
        return text[len(before):]


def save_tokenizers_file(tok, directory) -> Path:
    """<directory>/tokenizer.json, written atomically."""
    path = Path(directory) / TOKENIZER_FILE
    write_text_atomic(path, tok.to_str(pretty=True))
    return path


def load_tokenizer(spec) -> ByteTokenizer | BPETokenizer:
    """"bytes", a tokenizer .json file, or a directory holding tokenizer.json (a run/shard dir)."""
    if isinstance(spec, (ByteTokenizer, BPETokenizer)):
        return spec
    spec = str(spec)
    if spec == "bytes":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"data.tokenizer: no tokenizer file at '{path}'; use 'bytes' or a .json "
                        "written by `python -m data_prep.train_bpe`")
    try:
        head = read_json(path, MAX_TOKENIZER_BYTES, DataError, "tokenizer")
    except DataError as e:
        raise DataError(f"data.tokenizer: {e}") from None
    if isinstance(head, dict) and head.get("type") == _BYTES_MARKER:
        return ByteTokenizer()
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise DataError(f"data.tokenizer: '{path}' could not be loaded by tokenizers ({e})") from None
    if is_byte_level(tok):
        return ByteTokenizer()  # the same ids; bytes in, bytes out without going through str
    return BPETokenizer(tok, name=f"bpe{tok.get_vocab_size()}")
