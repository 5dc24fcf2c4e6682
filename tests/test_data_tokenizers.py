"""Tokenizers: bytes are lossless, BPE round-trips text, both survive save/load into a run dir."""

import numpy as np
import pytest

from bdh_scale.data import DataConfig, DataError, build_data, load_tokenizer
from bdh_scale.data.tokenize.bpe import train_bpe
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer, token_dtype

SAMPLES = ["Reprise de la session", "Je déclare reprise la session du Parlement européen.",
           "Resumption of the session", "naïve café — 東京 🐉 \t tabs\n\nand blank lines"]
CORPUS = [s + "\n" for s in SAMPLES] * 30


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter(CORPUS), vocab_size=400)


def test_bytes_tokenizer_is_lossless_for_any_bytes():
    tok = ByteTokenizer()
    raw = bytes(range(256))
    assert tok.decode_bytes(tok.encode_rows([raw])) == raw
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([0x66, 0xFF, 0x6F]) == "f\ufffdo"  # invalid byte -> replacement char
    assert tok.decode(tok.encode("東京 🐉")) == "東京 🐉"


def test_bpe_round_trips_text_including_unseen_characters(bpe):
    for text in SAMPLES + ["ünseen Ωmega ₿ text", "", " leading space", "x" * 500]:
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(SAMPLES[1])) < len(SAMPLES[1].encode())  # merges actually compress


def test_bpe_encode_rows_matches_encode_per_row(bpe):
    ids = bpe.encode_rows(SAMPLES)
    assert ids.dtype == np.uint16
    assert ids.tolist() == [i for s in SAMPLES for i in bpe.encode(s)]


def test_tokenizers_save_into_a_run_dir_and_load_back(tmp_path, bpe):
    bpe.save(tmp_path / "bpe_run")
    ByteTokenizer().save(tmp_path / "bytes_run")
    back = load_tokenizer(tmp_path / "bpe_run")
    assert back.vocab_size == bpe.vocab_size > 256 and back.same_as(bpe)
    assert back.encode(SAMPLES[3]) == bpe.encode(SAMPLES[3])
    assert isinstance(load_tokenizer(tmp_path / "bytes_run"), ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "bytes_run" / "tokenizer.json"), ByteTokenizer)


def test_vocab_size_and_dtype_follow_the_tokenizer(tmp_path, bpe):
    (tmp_path / "c.txt").write_text("".join(CORPUS))
    path = bpe.save(tmp_path / "tok")
    data = build_data(DataConfig(source=str(tmp_path / "c.txt"), tokenizer=str(path), prefetch=0),
                      batch_size=2)
    assert data.tokenizer.vocab_size == bpe.vocab_size
    assert data.train.stream.dtype == np.uint16
    assert data.bytes_per_token > 1.5  # BPE tokens span several bytes
    x, y, _, _ = data.train.next_batch(8)
    assert int(x.max()) < bpe.vocab_size
    assert token_dtype(256) == np.uint8 and token_dtype(70_000) == np.uint32


def test_bad_tokenizer_specs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no tokenizer file at"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(iter(CORPUS), vocab_size=100)
