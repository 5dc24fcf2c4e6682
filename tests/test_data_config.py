"""DataConfig validation, the bundle built with prefetch, bench_data, and the europarl recipes."""

import threading
from pathlib import Path

import pytest
import torch

from bdh_scale.bench.data import bench_data
from bdh_scale.data import DataConfig, build_data
from bdh_scale.errors import ConfigError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("europarl_*.yaml"))


@pytest.mark.parametrize("field, value, message", [
    ("val_fraction", 1.0, "data.val_fraction: must be in \\[0, 1\\), got 1.0"),
    ("val_fraction", -0.1, "in \\[0, 1\\)"),
    ("max_tokens", 0, "data.max_tokens: must be >= 1, got 0"),
    ("prefetch", -1, "data.prefetch"),
    ("source", "  ", "data.source: empty"),
    ("translation", ["fr"], "data.translation"),
    ("translation", ["en", "en"], "two distinct"),
    ("tokenizer", "", "data.tokenizer"),
])
def test_impossible_values_name_the_field_and_the_fix(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**{field: value})


def test_every_field_has_a_comment_saying_what_it_does():
    src = (Path(__file__).parent.parent / "bdh_scale/data/config.py").read_text().splitlines()
    for name in DataConfig.__dataclass_fields__:
        i = next(i for i, line in enumerate(src) if line.strip().startswith(f"{name}:"))
        assert src[i - 1].strip().startswith("#"), name


def prefetch_threads():
    return sum(t.name == "bdh-data-prefetch" for t in threading.enumerate())


def test_default_bundle_prefetches_and_close_stops_the_thread():
    before = prefetch_threads()
    data = build_data(DataConfig(), batch_size=4, seed=1337)
    x, y, restarted, _ = data.train.next_batch(32)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long and restarted.all()
    assert prefetch_threads() == before + 1
    data.close()
    assert prefetch_threads() == before
    assert data.train.state_dict()["tokens_served"] == 4 * 32


def test_bench_data_reports_throughput_for_bytes_and_bpe(tmp_path):
    from bdh_scale.data.tokenize.bpe import train_bpe

    tok = train_bpe(iter(["some text to merge, some text to merge\n"] * 50), vocab_size=300)
    path = tok.save(tmp_path)
    for cfg, vocab in ((DataConfig(source="europarl_en_fr", max_tokens=50_000), 256),
                       (DataConfig(source="europarl_en_fr", tokenizer=str(path), max_tokens=50_000),
                        tok.vocab_size)):
        out = bench_data(cfg, T=64, B=4, steps=5)
        assert out["serve_tokens_per_s"] > 0 and out["build_tokens_per_s"] > 0
        assert out["n_tokens"] == 50_000 and out["vocab_size"] == vocab


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_europarl_recipes_load_and_their_data_serves_a_window_per_lane(recipe):
    from bdh_scale.config import load_config

    cfg = load_config(recipe)
    assert cfg.data.source == "europarl_en_fr" and cfg.train.state == "carry"
    data = build_data(cfg.data, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len)
    try:
        x = data.train.next_batch(cfg.train.seq_len).x
        assert x.shape == (cfg.train.batch_size, cfg.train.seq_len)
        assert next(data.val_batches(cfg.train.seq_len, cfg.train.batch_size, 1)).x.shape[1] == \
            cfg.train.seq_len
    finally:
        data.close()


def test_there_are_small_medium_large_and_a_forget_variant():
    names = {r.stem for r in RECIPES}
    assert {"europarl_small", "europarl_medium", "europarl_large"} <= names
    assert any(n.endswith("_forget") for n in names)
