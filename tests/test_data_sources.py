"""Sources through `datasets`: local files, the hub code path, bundled samples, bad inputs."""

import json

import datasets
import numpy as np
import pytest
import torch

from bdh_scale.data import DataConfig, DataError, build_data
from bdh_scale.data.sources.names import BUNDLED_DIR

TEXT = "the quick brown fox jumps over the lazy dog\n" * 40


def build(source, **kw):
    kw.setdefault("prefetch", 0)
    batch = kw.pop("batch_size", 2)
    return build_data(DataConfig(source=str(source), **kw), batch_size=batch)


def stream_bytes(data) -> bytes:
    lanes = data.train.lanes if hasattr(data.train, "lanes") else data.train
    return bytes(lanes.stream.read(0, len(lanes.stream)).astype(np.uint8)) + \
        bytes(data.val.read(0, len(data.val)).astype(np.uint8))


def test_text_file_is_read_byte_exact_including_invalid_utf8(tmp_path):
    raw = TEXT.encode() + b"caf\xc3\xa9 \xff\xfe broken bytes\n" + TEXT.encode()
    (tmp_path / "c.txt").write_bytes(raw)
    data = build(tmp_path / "c.txt")
    assert stream_bytes(data) == raw  # bytes in, bytes out
    assert data.tokenizer.decode(list(b"\xff")) == "\ufffd"


def test_tinyshakespeare_split_is_nanogpt_first_90_percent_train():
    raw = (BUNDLED_DIR / "tinyshakespeare" / "input.txt").read_bytes()
    data = build("tinyshakespeare", batch_size=1)
    n_train = int(len(raw) * 0.9)
    assert len(data.val) == len(raw) - n_train
    assert bytes(data.val.read(0, 50).astype(np.uint8)) == raw[n_train:n_train + 50]
    assert data.bytes_per_token == 1.0


def test_jsonl_and_parquet_read_the_text_column_with_separator(tmp_path):
    rows = [{"id": i, "body": f"document {i}"} for i in range(50)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    expected = "".join(f"document {i}\n\n" for i in range(50)).encode()
    for name in ("d.jsonl", "d.parquet"):
        data = build(tmp_path / name, text_column="body")
        assert stream_bytes(data) == expected


def test_missing_text_column_names_the_available_ones(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(DataError, match=r"data.text_column: 'text'.*\['body', 'id'\]"):
        build(tmp_path / "d.jsonl")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such file or directory: '.*nope.txt'"):
        build(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="matches no files"):
        build(tmp_path / "*.jsonl")


def test_empty_corpus_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        build(tmp_path / "empty.txt")


def test_corpus_too_short_for_the_lanes_says_what_to_lower(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)  # 1,760 bytes, 1,584 train
    with pytest.raises(DataError, match=r"2\*8\*\(128\+1\) = 2,064.*lower train.batch_size"):
        build_data(DataConfig(source=str(tmp_path / "c.txt"), prefetch=0), batch_size=8,
                   world_size=2, seq_len=128)


def test_bundled_europarl_is_pair_formatted_and_skips_empty_sides():
    data = build("europarl_en_fr", batch_size=1, val_fraction=0.0)
    text = stream_bytes(data).decode()
    lines = text.splitlines()
    assert lines[0] == "<FR:Reprise de la session>" and lines[1] == "<EN:Resumption of the session>"
    assert all(l.startswith(("<FR:", "<EN:")) and l.endswith(">") for l in lines)
    assert [l[:4] for l in lines[:6]] == ["<FR:", "<EN:"] * 3
    assert "<FR:>" not in text and "<EN:>" not in text
    fr = (BUNDLED_DIR / "europarl/fr-en/fr.txt").read_text().splitlines()
    en = (BUNDLED_DIR / "europarl/fr-en/en.txt").read_text().splitlines()
    kept = sum(1 for f, e in zip(fr, en) if f.strip() and e.strip())
    assert len(lines) == 2 * kept < 2 * len(fr)


def test_val_batches_are_fixed_and_continue_row_by_row():
    data = build("tinyshakespeare", batch_size=1)
    a = list(data.val_batches(32, 4, 3))
    b = list(data.val_batches(32, 4, 3))
    assert len(a) == 3 and all(batch.x.shape == (4, 32) for batch in a)
    assert all(torch.equal(u, v) for b1, b2 in zip(a, b) for u, v in zip(b1, b2))
    assert np.array_equal(a[0].y[:, -1], a[1].x[:, 0])  # row r of batch k+1 continues batch k
    assert [bool(batch.restarted.all()) for batch in a] == [True, False, False]  # a row starts once


def hub_redirect(monkeypatch, local_jsonl):
    """Make datasets.load_dataset(<hub name>, ...) stream a local jsonl through the same API (the
    Hub's commit answered without asking it)."""
    import bdh_scale.data.sources.hub as hub

    real = datasets.load_dataset
    calls = []
    monkeypatch.setattr(hub, "hub_commit", lambda cfg: "0" * 40)

    def fake(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return real("json", data_files=str(local_jsonl), split="train", streaming=streaming)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_hub_source_streams_rows_and_renders_translation_dicts(tmp_path, monkeypatch):
    rows = [{"translation": {"en": f"sentence {i}", "fr": f"phrase {i}"}} for i in range(30)]
    rows[3]["translation"]["fr"] = ""  # skipped pair
    (tmp_path / "hub.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = hub_redirect(monkeypatch, tmp_path / "hub.jsonl")
    data = build("Helsinki-NLP/europarl", hub_config="en-fr", text_column="translation",
                 translation=["fr", "en"], val_fraction=0.0, batch_size=1, max_tokens=10_000)
    assert calls == [("Helsinki-NLP/europarl", "en-fr", "train", True)]
    text = stream_bytes(data).decode()
    assert text.startswith("<FR:phrase 0>\n<EN:sentence 0>\n<FR:phrase 1>")  # bundle format
    assert "sentence 3" not in text and text.count("<FR:") == 29


def test_hub_max_tokens_caps_the_stream(tmp_path, monkeypatch):
    (tmp_path / "hub.jsonl").write_text("".join(json.dumps({"text": "abcd" * 50}) + "\n"
                                                for _ in range(100)))
    hub_redirect(monkeypatch, tmp_path / "hub.jsonl")
    assert build("someone/corpus", max_tokens=999, batch_size=1).n_tokens == 999


def test_translation_column_without_langs_says_to_set_them(tmp_path, monkeypatch):
    (tmp_path / "hub.jsonl").write_text(json.dumps({"translation": {"en": "a", "fr": "b"}}) + "\n")
    hub_redirect(monkeypatch, tmp_path / "hub.jsonl")
    with pytest.raises(DataError, match=r"set data.translation.*\['en', 'fr'\]"):
        build("Helsinki-NLP/europarl", text_column="translation")


def test_unreachable_hub_is_one_clear_error_naming_offline_alternatives(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as e:
        build("Helsinki-NLP/europarl", hub_config="en-fr")
    msg = str(e.value)
    assert msg.startswith("data.source: the Hugging Face Hub is unreachable")
    assert "shard dir" in msg and "'tinyshakespeare'" in msg and "'europarl_en_fr'" in msg
    assert "\n" not in msg


def test_connection_error_while_streaming_is_the_same_error(monkeypatch):
    def refuse(*a, **k):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataError, match="Hub is unreachable.*offline alternatives"):
        build("x/y")


def test_tokenizing_a_hub_dataset_asks_its_commit_once_and_records_the_one_read(tmp_path, monkeypatch):
    """The commit read and the commit meta.json records are one answer of the Hub, not two."""
    import bdh_scale.data.sources.hub as hub
    from data_prep import tokenize

    (tmp_path / "hub.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20)))
    calls = hub_redirect(monkeypatch, tmp_path / "hub.jsonl")
    answers = iter(["a" * 40, "b" * 40])  # the dataset moves on between two questions
    asked = []
    monkeypatch.setattr(hub, "hub_commit", lambda cfg: asked.append(1) or next(answers))
    meta = tokenize.main(["--source", "someone/corpus", "--out", str(tmp_path / "sh")])
    assert len(asked) == 1 and calls
    assert meta["source_fingerprint"]["revision"] == "a" * 40
