"""data_prep commands and the shard dirs they write: same tokens as on the fly, checksums
enforced, one-line errors with exit code 2."""

import json

import numpy as np
import pytest
import torch

from bdh_scale.data import DataConfig, DataError, build_data
from data_prep import europarl, stats, tokenize, train_bpe
from data_prep._cli import run

CORPUS = "".join(f"line {i}: the parliament resumed its session, n'est-ce pas?\n" for i in range(300))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


def all_tokens(data) -> np.ndarray:
    lanes = data.train.lanes if hasattr(data.train, "lanes") else data.train
    return np.concatenate([lanes.stream.read(0, len(lanes.stream)), data.val.read(0, len(data.val))])


def build(source, **kw):
    return build_data(DataConfig(source=str(source), prefetch=0, **kw), batch_size=2)


def test_byte_shards_hold_the_same_tokens_as_reading_the_text(tmp_path, corpus):
    meta = tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "sh"),
                          "--shard-tokens", "1000"])
    assert meta["dtype"] == "uint8" and len(meta["shards"]) == -(-len(CORPUS) // 1000)
    assert meta["num_tokens"] == meta["text_bytes"] == len(CORPUS)
    sharded, direct = build(tmp_path / "sh"), build(corpus)
    assert np.array_equal(all_tokens(sharded), all_tokens(direct))
    assert np.array_equal(sharded.train.next_batch(64).x, direct.train.next_batch(64).x)
    assert build(tmp_path / "sh", max_tokens=500).n_tokens == 500


def test_bpe_pipeline_train_tokenize_load(tmp_path, corpus):
    tok = train_bpe.main(["--source", str(corpus), "--vocab-size", "300",
                          "--out", str(tmp_path / "bpe")])
    tok_file = tmp_path / "bpe" / "tokenizer.json"
    meta = tokenize.main(["--source", str(corpus), "--tokenizer", str(tok_file),
                          "--out", str(tmp_path / "sh")])
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    data = build(tmp_path / "sh")  # tokenizer comes from the shard dir
    assert data.tokenizer.same_as(tok)
    assert data.tokenizer.decode(all_tokens(data).tolist()) == CORPUS
    assert abs(data.bytes_per_token - meta["text_bytes"] / meta["num_tokens"]) < 0.5


def test_corrupted_or_truncated_shard_is_refused_naming_the_file(tmp_path, corpus):
    tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "sh"), "--shard-tokens", "4000"])
    shard = tmp_path / "sh" / "tokens_000001.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="shard '.*tokens_000001.bin' is corrupted"):
        build(tmp_path / "sh")
    build(tmp_path / "sh", verify_checksums=False)  # opt-out works
    shard.write_bytes(bytes(raw[:-3]))
    with pytest.raises(DataError, match="tokens_000001.bin' has .* bytes.*truncated"):
        build(tmp_path / "sh", verify_checksums=False)
    shard.unlink()
    with pytest.raises(DataError, match="tokens_000001.bin' listed in meta.json is missing"):
        build(tmp_path / "sh")


def test_a_different_tokenizer_than_the_shards_is_refused(tmp_path, corpus):
    tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "sh")])
    train_bpe.main(["--source", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "t.json")])
    with pytest.raises(DataError, match="data.tokenizer: .* differs from the tokenizer"):
        build(tmp_path / "sh", tokenizer=str(tmp_path / "t.json"))


def test_europarl_command_writes_tagged_pairs_and_skips_empty_sides(tmp_path):
    (tmp_path / "fr.txt").write_text("Bonjour\n\nMerci  beaucoup\nOui\n")
    (tmp_path / "en.txt").write_text("Hello\nLost\nThank you\n\n")
    counts = europarl.main(["--src", str(tmp_path / "fr.txt"), "--tgt", str(tmp_path / "en.txt"),
                            "--out", str(tmp_path / "out.txt")])
    assert counts == {"lines": 4, "pairs": 2}
    assert (tmp_path / "out.txt").read_text() == \
        "<FR:Bonjour>\n<EN:Hello>\n<FR:Merci beaucoup>\n<EN:Thank you>\n"


def test_stats_reports_tokens_and_lane_geometry(corpus, capsys):
    out = stats.main(["--source", str(corpus), "--batch-size", "4", "--seq-len", "64", "--json"])
    assert out["tokens"] == out["utf8_bytes"] == len(CORPUS)
    assert out["rows"] == 300 and out["lines"] == 300
    assert out["lanes"]["stretch_tokens"] == out["train_tokens"] // 4
    assert json.loads(capsys.readouterr().out)["tokens"] == len(CORPUS)


@pytest.mark.parametrize("command, argv, message", [
    (tokenize, ["--source", "missing.txt", "--out", "x"],
     "no such file or directory: 'missing.txt'"),
    (train_bpe, ["--source", "tinyshakespeare", "--vocab-size", "10", "--out", "x"],
     "--vocab-size: 10 leaves no room"),
    (europarl, ["--src", "nope_fr.txt", "--tgt", "nope_en.txt", "--out", "o.txt"], "no such file"),
    (stats, ["--source", "tinyshakespeare", "--batch-size", "2"], "go together"),
    (tokenize, ["--source", "EMPTY", "--out", "x"], "is empty"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(tmp_path, monkeypatch, capsys,
                                                          command, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    argv = [str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        run(command.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err


def test_existing_shard_dir_needs_overwrite(tmp_path, corpus, capsys):
    tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "sh")])
    with pytest.raises(SystemExit) as e:
        tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "sh")])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("command", [tokenize, train_bpe, europarl, stats])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        command.parse(["--help"])
    assert e.value.code == 0 and "usage: python -m data_prep." in capsys.readouterr().out


def write_docs(path, n=120):
    path.write_text("".join(json.dumps({"text": f"doc {i}: " + "la session " * (i % 7 + 1)}) + "\n"
                            for i in range(n)))
    return path


def shard_files(d) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("bpe", [False, True])
def test_more_workers_write_byte_identical_shards_and_document_index(tmp_path, corpus, bpe):
    docs = write_docs(tmp_path / "docs.jsonl")
    tok = []
    if bpe:
        train_bpe.main(["--source", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "bpe")])
        tok = ["--tokenizer", str(tmp_path / "bpe" / "tokenizer.json")]
    outs = []
    for workers in ("0", "1", "3"):
        out = tmp_path / f"sh{workers}"
        tokenize.main(["--source", str(docs), "--out", str(out), "--shard-tokens", "700", "--workers", workers, *tok])
        outs.append(shard_files(out))
    assert outs[0] == outs[1] == outs[2]  # every file, meta.json included
    meta = json.loads(outs[0]["meta.json"])
    assert meta["documents"]["num_docs"] == 120 and len(meta["shards"]) > 2


def test_shards_of_documents_flag_the_same_starts_as_reading_the_rows(tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl")
    tokenize.main(["--source", str(docs), "--out", str(tmp_path / "sh"), "--shard-tokens", "500"])
    sharded, direct = build(tmp_path / "sh"), build(docs)
    assert sharded.doc_reset and direct.doc_reset
    assert np.array_equal(np.asarray(sharded.val.doc_starts), direct.val.doc_starts)
    for T in (32, 32, 50):
        a, b = sharded.train.next_batch(T), direct.train.next_batch(T)
        assert torch.equal(a.x, b.x) and torch.equal(a.doc_start, b.doc_start) and a.doc_start.any()
    # a cap cuts the index with the tokens
    tokenize.main(["--source", str(docs), "--out", str(tmp_path / "cap"), "--max-tokens", "777"])
    capped, direct = build(tmp_path / "cap"), build(docs, max_tokens=777)
    assert capped.n_tokens == 777 and capped.train.stream.num_documents() + capped.val.num_documents() == \
        direct.train.stream.num_documents() + direct.val.num_documents()


def test_meta_records_the_source_fingerprint_and_the_tokenizer_hash(tmp_path, corpus):
    from bdh_scale.data.tokenize.encode import tokenizer_hash
    from bdh_scale.data.tokenize.tokenizer import ByteTokenizer

    first = tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "a")])
    assert first["source_fingerprint"]["kind"] == "local" and first["source_fingerprint"]["bytes"] == len(CORPUS)
    assert first["tokenizer_sha256"] == tokenizer_hash(ByteTokenizer()) and first["documents"] is None
    corpus.write_text(CORPUS + "one more line\n")  # the corpus changed: so does its fingerprint
    second = tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "b")])
    assert second["source_fingerprint"]["sha256"] != first["source_fingerprint"]["sha256"]


def test_a_shard_dir_refuses_a_tokenizer_it_was_not_made_with(tmp_path, corpus):
    tokenize.main(["--source", str(corpus), "--out", str(tmp_path / "sh")])
    train_bpe.main(["--source", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "bpe")])
    (tmp_path / "sh" / "tokenizer.json").write_bytes((tmp_path / "bpe" / "tokenizer.json").read_bytes())
    with pytest.raises(DataError, match="tokenizer.json' is not the tokenizer the shards were made with"):
        build(tmp_path / "sh")
