"""Stream lanes over a generated corpus of several shards read through `datasets` streaming:
every document once per epoch across the lanes, whole and flagged; held-out documents never
trained on; the same batches whatever the worker count; exact resume; a fixed held-out set;
one clear error for each bad input."""
import dataclasses
import subprocess
import sys
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from bdh_scale.config import load_config
from bdh_scale.data import DataConfig, DataError, build_data
from bdh_scale.data.build import lanes_kind
from bdh_scale.data.sources.units import PIECE_BYTES
from tests.helpers.corpus import doc_ids, documents, lane_streams, write_corpus
from tests.helpers.tiny_runs import ROOT, clean_env

SEP = "\n\n"  # data.doc_separator, after every row


def stream_cfg(root, **kw) -> DataConfig:
    return DataConfig(source=str(root), lanes="stream", val_tokens=kw.pop("val_tokens", 600), workers=kw.pop("workers", 0),
                      **kw)


def until_next_epoch(data, T=24, limit=2000) -> list:
    batches = []
    while data.train.epoch == 0:
        batches.append(data.train.next_batch(T))
        assert len(batches) < limit
    return batches


def dealt(data, batches) -> list[str]:
    return [d for x, s in lane_streams(data.train, batches) for d in documents(x, s, data.tokenizer.decode)]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_every_document_is_dealt_once_per_epoch_whole_and_flagged(tmp_path, kind):
    texts = write_corpus(tmp_path / "c", shards=3, per_shard=40, kind=kind)
    data = build_data(stream_cfg(tmp_path / "c"), batch_size=3, seq_len=24)
    try:
        held = doc_ids(documents(np.asarray(data.val.pieces[0]), _flags(data.val), data.tokenizer.decode))
        batches = until_next_epoch(data)
        docs = dealt(data, batches)
    finally:
        data.close()
    assert held == list(range(len(held))) and 0 < len(held) < 20  # the first documents, held out
    by_id = {i: t + SEP for i, t in enumerate(texts)}
    assert all(by_id[i] == d for i, d in zip(doc_ids(docs), docs))  # whole documents, exact text
    counts = Counter(doc_ids(docs))
    train_ids = [i for i in range(len(texts)) if i not in held]
    assert set(counts) == set(train_ids)  # held-out documents never reach the lanes
    # epoch 1 has begun with its first few documents; every other one was dealt exactly once
    again = sorted(i for i, n in counts.items() if n == 2)
    assert again == train_ids[:len(again)] and set(counts.values()) <= {1, 2}
    assert data.train.docs_dealt == len(train_ids) + len(again)


def _flags(stream) -> np.ndarray:
    return stream.doc_mask([0], len(stream))[0]


def test_text_files_are_cut_into_pieces_dealt_whole_to_lanes_and_ranks(tmp_path):
    lines = [f"line {i:05d} of a running text without documents\n" for i in range(9000)]
    (tmp_path / "a.txt").write_text("".join(lines[:5000]))
    (tmp_path / "b.txt").write_text("".join(lines[5000:]))
    streams = []
    for rank in (0, 1):
        data = build_data(stream_cfg(tmp_path / "*.txt", val_tokens=PIECE_BYTES), batch_size=2, world_size=2,
                          rank=rank, seq_len=64)
        try:
            assert not data.doc_reset
            batches = until_next_epoch(data, T=512)
            assert not any(b.doc_start.any() for b in batches)
            streams += [x for x, _ in lane_streams(data.train, batches)]
        finally:
            data.close()
    seen = Counter()
    for x in streams:  # each lane reads runs of consecutive lines: pieces of the text
        text = bytes(x.astype(np.uint8)).decode()
        numbers = [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]
        seen.update(numbers)
        assert sum(b == a + 1 for a, b in zip(numbers, numbers[1:])) >= 0.95 * (len(numbers) - 1)
    first_train = min(seen)
    assert first_train > 0  # the first piece is held out
    assert all(seen[i] >= 1 for i in range(first_train + 1, 9000))  # every line of the rest is read


def test_the_same_batches_whatever_the_number_of_tokenizer_workers(tmp_path):
    write_corpus(tmp_path / "c", shards=4, per_shard=30, kind="parquet")
    runs = []
    for workers in (0, 1, 3):
        data = build_data(stream_cfg(tmp_path / "c", workers=workers), batch_size=4, seq_len=32)
        try:
            runs.append([data.train.next_batch(T) for T in (32, 32, 16, 64, 32)])
        finally:
            data.close()
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert runs[0][0].restarted.all() and not any(b.restarted.any() for b in runs[0][1:])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_state_continues_token_for_token_across_epochs(tmp_path, workers):
    write_corpus(tmp_path / "c", shards=3, per_shard=20)
    cfg = stream_cfg(tmp_path / "c", workers=workers)
    Ts = [24, 24, 40, 8] * 30
    ref = build_data(cfg, batch_size=3, seq_len=40)
    try:
        expected = [ref.train.next_batch(T) for T in Ts]
        assert ref.train.epoch >= 2  # the comparison crosses epoch boundaries
    finally:
        ref.close()
    for cut in (1, 37, 71):
        first = build_data(cfg, batch_size=3, seq_len=40)
        try:
            for T in Ts[:cut]:
                first.train.next_batch(T)
            state = first.train.state_dict()
        finally:
            first.close()
        state = torch.load(_saved(tmp_path, state), weights_only=True)["lanes"]  # as a checkpoint stores it
        resumed = build_data(cfg, batch_size=3, seq_len=40)
        try:
            resumed.train.load_state_dict(state)
            for T, want in zip(Ts[cut:], expected[cut:]):
                assert all(torch.equal(u, v) for u, v in zip(resumed.train.next_batch(T), want))
            assert resumed.train.tokens_served == sum(Ts) * 3
        finally:
            resumed.close()


def _saved(tmp_path, state):
    path = tmp_path / "lanes.pt"
    torch.save({"lanes": state}, path)
    return path


def test_a_state_of_another_layout_is_refused(tmp_path):
    write_corpus(tmp_path / "c", shards=2, per_shard=30)
    a = build_data(stream_cfg(tmp_path / "c"), batch_size=2, seq_len=16)
    b = build_data(stream_cfg(tmp_path / "c"), batch_size=3, seq_len=16)
    try:
        with pytest.raises(DataError, match="do not match this run's .*train.batch_size"):
            b.train.load_state_dict(a.train.state_dict())
    finally:
        a.close()
        b.close()


def test_held_out_set_is_identical_on_every_rank_and_read_back_on_resume(tmp_path):
    write_corpus(tmp_path / "c", shards=4, per_shard=30)
    cfg = stream_cfg(tmp_path / "c", val_tokens=900)
    vals, firsts = [], []
    for rank in (0, 1):
        data = build_data(cfg, batch_size=2, world_size=2, rank=rank, seq_len=16)
        vals.append([b for b in data.val_batches(16, 4, 5)])
        data.save_held_out(tmp_path / f"run{rank}")
        data.close()
    assert len(vals[0]) == 5
    assert all(torch.equal(u, v) for a, b in zip(*vals) for u, v in zip(a, b))
    assert vals[0][0].doc_start.any() and vals[0][0].restarted.all()
    # the corpus changes under a resumed run: its held-out set (and what it holds out) does not
    write_corpus(tmp_path / "c", shards=4, per_shard=30, start=1000)
    resumed = build_data(cfg, batch_size=2, world_size=2, rank=0, seq_len=16, held_out_dir=tmp_path / "run0")
    fresh = build_data(cfg, batch_size=2, world_size=2, rank=0, seq_len=16)
    try:
        again = list(resumed.val_batches(16, 4, 5))
        assert all(torch.equal(u, v) for a, b in zip(vals[0], again) for u, v in zip(a, b))
        assert not torch.equal(next(fresh.val_batches(16, 4, 1)).x, vals[0][0].x)
    finally:
        resumed.close()
        fresh.close()
    # a cache read with another config is not used
    other = dataclasses.replace(cfg, val_tokens=800)
    data = build_data(other, batch_size=2, world_size=2, rank=0, seq_len=16, held_out_dir=tmp_path / "run0")
    try:
        assert len(data.val) == 800 and data.tokenizer.decode(data.val.read(0, 9).tolist()) == "<doc 1000"
    finally:
        data.close()


def fake_hub(monkeypatch, splits: dict):
    """data.source names a Hub dataset; its splits are local jsonl files, read through the same
    `datasets` streaming API, at a fixed commit."""
    import bdh_scale.data.sources.hub as hub

    real = datasets.load_dataset
    monkeypatch.setattr(hub, "hub_commit", lambda cfg: "0123456789abcdef")

    def load(path, name=None, split=None, streaming=False, revision=None, **kw):
        if split not in splits:
            raise ValueError(f'Bad split: {split}. Available splits: {sorted(splits)}')
        return real("json", data_files=str(splits[split]), split="train", streaming=streaming)
    monkeypatch.setattr(datasets, "load_dataset", load)


def test_a_validation_split_is_the_held_out_set_and_nothing_is_held_out_of_training(tmp_path, monkeypatch):
    train = write_corpus(tmp_path / "train", shards=1, per_shard=50)
    write_corpus(tmp_path / "val", shards=1, per_shard=20, start=500)
    fake_hub(monkeypatch, {"train": tmp_path / "train/part-000.jsonl", "validation": tmp_path / "val/part-000.jsonl"})
    cfg = DataConfig(source="someone/corpus", val_split="validation", val_tokens=400, workers=0)
    assert lanes_kind(cfg) == "stream"
    data = build_data(cfg, batch_size=2, seq_len=16)
    try:
        assert "0123456789" in data.source and len(data.val) == 400
        assert data.tokenizer.decode(data.val.read(0, 9).tolist()) == "<doc 500>"
        docs = dealt(data, until_next_epoch(data))
    finally:
        data.close()
    assert set(doc_ids(docs)) == set(range(len(train)))


@pytest.mark.parametrize("cfg_kw, message", [
    ({"text_column": "body"}, r"data.text_column: 'body' is not a column of .*available columns: \['id', 'text'\]"),
    ({"val_split": "validation"}, r"data.val_split: local or remote files have one split, 'train'; 'validation' does not exist"),
    ({"max_tokens": 1000}, r"data.max_tokens: it caps the in-memory stream of stretch lanes"),
])
def test_bad_stream_inputs_are_one_clear_error(tmp_path, cfg_kw, message):
    write_corpus(tmp_path / "c", shards=2, per_shard=10)
    with pytest.raises(DataError, match=message):
        build_data(stream_cfg(tmp_path / "c", **cfg_kw), batch_size=2, seq_len=16)


def test_a_split_the_hub_dataset_does_not_have_is_refused(tmp_path, monkeypatch):
    write_corpus(tmp_path / "train", shards=1, per_shard=20)
    fake_hub(monkeypatch, {"train": tmp_path / "train/part-000.jsonl"})
    with pytest.raises(DataError, match=r"data.val_split: 'someone/corpus' rejected .* split 'valid'.*Bad split"):
        build_data(DataConfig(source="someone/corpus", val_split="valid", workers=0), batch_size=2, seq_len=16)
    with pytest.raises(DataError, match=r"data.hub_config/hub_split: .* split 'tran'"):
        build_data(DataConfig(source="someone/corpus", hub_split="tran", workers=0), batch_size=2, seq_len=16)


def test_fewer_documents_than_lanes_is_refused_at_start(tmp_path):
    write_corpus(tmp_path / "c", shards=1, per_shard=6)
    with pytest.raises(DataError, match="has 5 documents for rank 0, fewer than its 8 lanes"):
        build_data(stream_cfg(tmp_path / "c", val_tokens=17, workers=1), batch_size=8, seq_len=16)
    with pytest.raises(DataError, match="holds no text once 6 documents are held out for validation"):
        build_data(stream_cfg(tmp_path / "c", val_tokens=10_000), batch_size=1, seq_len=16)


@pytest.mark.parametrize("recipe", ["recipes/stream_fineweb_edu.yaml", "recipes/stream_europarl.yaml"])
def test_stream_recipes_offline_stop_at_once_with_one_line_and_write_nothing(tmp_path, recipe):
    # nothing listens on port 9: the Hub is unreachable wherever the suite runs
    env = clean_env({"HF_ENDPOINT": "http://127.0.0.1:9"})
    # memory_check off: these GPU recipes would otherwise be refused first on a CPU-sized machine
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), recipe, f"train.out_dir={tmp_path / 'runs'}",
                           "train.memory_check=false"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # one line: no retry loop
    assert len(lines) == 1, proc.stderr
    source = load_config(ROOT / recipe).data.source
    assert lines[0].startswith(f"error: data.source: the Hugging Face Hub is unreachable, so '{source}'")
    assert "offline alternatives" in lines[0] and not (tmp_path / "runs").exists()


def test_auto_streams_hub_sources_and_large_local_files(tmp_path):
    write_corpus(tmp_path / "c", shards=2, per_shard=10)
    assert lanes_kind(DataConfig(source="someone/corpus")) == "stream"
    assert lanes_kind(DataConfig(source="someone/corpus", max_tokens=10**6)) == "stretch"
    assert lanes_kind(DataConfig(source=str(tmp_path / "c"))) == "stretch"
    assert lanes_kind(DataConfig(source=str(tmp_path / "c"), stream_above_mb=0.001)) == "stream"
    assert lanes_kind(DataConfig(source="tinyshakespeare")) == "stretch"
    with pytest.raises(DataError, match="data.lanes: stream lanes read .* 'tinyshakespeare' is a bundled corpus"):
        lanes_kind(DataConfig(source="tinyshakespeare", lanes="stream"))


@pytest.mark.parametrize("override, message", [
    ("data.text_column=body", "data.text_column: 'body' is not a column of"),
    ("train.batch_size=40", "fewer than its 40 lanes"),
])
def test_bad_stream_input_stops_a_run_with_one_line_and_nothing_written(tmp_path, override, message):
    write_corpus(tmp_path / "c", shards=2, per_shard=15)
    args = [str(ROOT / "train.py"), str(ROOT / "recipes/shakespeare_cpu.yaml"), f"data.source={tmp_path / 'c'}",
            "data.lanes=stream", "data.val_tokens=200", f"train.out_dir={tmp_path / 'runs'}", override]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=clean_env(None), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()
