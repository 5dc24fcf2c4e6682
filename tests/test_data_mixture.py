"""Mixtures of corpora (data.sources): refused in one line when the recipe is wrong; the weights
honoured over many documents, on stretch and stream lanes; every source held out on its own, and
validated on that set alone (val_loss/<name> in metrics.jsonl and the trackers); ranks reading
disjoint documents; a run stopped and resumed giving the losses of an uninterrupted one, on 1 and 2
processes."""
import math

import numpy as np
import pytest

from bdh_scale.config import load_config
from bdh_scale.data import DataConfig, build_data
from bdh_scale.errors import ConfigError
from tests.helpers.corpus import TAG, doc_ids, write_corpus
from tests.helpers.tiny_runs import (RECIPE, losses, main_in_process, metrics, overrides, rank_state, train_in_process,
                                     train_process)

MIX = "data.source=null"  # the test recipe reads tinyshakespeare: a mixture replaces it


def sources(*entries) -> str:
    """The override data.sources=[...] of (source, weight[, extra keys]) entries."""
    def one(e):
        extra = "".join(f", {k}: {v}" for k, v in (e[2] if len(e) > 2 else {}).items())
        return f"{{source: '{e[0]}', weight: {e[1]}{extra}}}"
    return "data.sources=[" + ", ".join(one(e) for e in entries) + "]"


def entry(source, weight, **extra) -> dict:
    return {"source": str(source), "weight": weight, **extra}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpora of tagged documents: 'a' (ids 0-599, two files) and 'b' (ids 10000-10599, two files)."""
    root = tmp_path_factory.mktemp("mix")
    write_corpus(root / "a", shards=2, per_shard=300)
    write_corpus(root / "b", shards=2, per_shard=300, start=10_000)
    return root


# -- the recipe ----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["data.source=europarl_en", sources(("europarl_fr", 1))],
     r"^data.sources: given with data.source='europarl_en'; a run reads one corpus \(data.source\) or a mixture"),
    ([MIX, "data.sources=[]"], r"^data.sources: an empty list; give one entry per corpus"),
    ([MIX, sources(("europarl_en", 0.7), ("europarl_fr", 0))], r"^data.sources\[1\].weight: 0 is not > 0; give every"),
    ([MIX, sources(("europarl_en", -1))], r"^data.sources\[0\].weight: -1 is not > 0"),
    ([MIX, "data.sources=[{source: europarl_en}]"], r"^data.sources\[0\].weight: missing; give every source"),
    ([MIX, sources(("europarl_en", 1, {"text_colum": "body"}))],
     r"^data.sources\[0\]: unknown key 'text_colum'; did you mean text_column\? \(an entry takes source, weight, name"),
    ([MIX, sources(("europarl_en", 1, {"tokenizer": "bytes"}))],
     r"^data.sources\[0\]: unknown key 'tokenizer';.* the other data keys are the run's\)"),
    ([MIX, sources(("europarl_en", 1, {"val_fraction": 1.5}))],
     r"^data.sources\[0\].val_fraction: must be in \[0, 1\), got 1.5"),
    ([MIX, sources(("europarl_en", 1, {"name": "en"}), ("x/en.txt", 1))],
     r"^data.sources\[1\].name: 'en' names data.sources\[0\] too"),
    ([MIX, sources(("synthetic:mqar", 1))], r"^data.sources\[0\].source: synthetic:mqar generates episodes"),
    ([MIX, "data.sources=[europarl_en]"], r"^data.sources\[0\]: expected a mapping such as"),
])
def test_a_wrong_mixture_is_one_line_naming_what_is_wrong_and_what_would_be_right(extra, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(RECIPE, extra)
    assert "\n" not in str(e.value)


def test_a_refused_mixture_writes_nothing(tmp_path, capsys):
    bad = sources(("europarl_en", 1), ("europarl_fr", -2))
    code = main_in_process(RECIPE, *overrides(tmp_path / "out", "x", MIX, bad))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "data.sources[1].weight: -2 is not > 0" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_shipped_recipe_mixes_the_bundled_english_and_french_europarl():
    cfg = load_config("recipes/mixture_cpu.yaml")
    assert cfg.data.source is None and [(e["source"], e["weight"]) for e in cfg.data.sources] == \
        [("europarl_en", 0.7), ("europarl_fr", 0.3)]
    assert load_config(RECIPE).data.source == "tinyshakespeare"  # no mixture: one corpus, as before


# -- stretch lanes -------------------------------------------------------------------------------

def decoded_documents(stream, decode) -> list[str]:
    """The documents of a stream that begin with their tag (not a document cut by the stream's start)."""
    edges = list(np.flatnonzero(stream.doc_mask([0], len(stream))[0])) + [len(stream)]
    tokens = stream.read(0, len(stream))
    texts = [decode(tokens[a:b].tolist()) for a, b in zip(edges, edges[1:])]
    return [t for t in texts if TAG.match(t)]


def test_stretch_lanes_draw_documents_by_weight_and_hold_out_each_sources_tail(corpora):
    cfg = DataConfig(sources=[entry(corpora / "a", 0.8), entry(corpora / "b", 0.2, val_fraction=0.2)], prefetch=0)
    data = build_data(cfg, batch_size=2, seq_len=32, seed=7)
    train = data.train.stream
    ids = doc_ids(decoded_documents(train, data.tokenizer.decode))
    share = sum(i < 10_000 for i in ids) / len(ids)
    assert len(ids) > 2000 and abs(share - 0.8) < 0.03  # about 2,900 draws; the standard error is 0.008
    held = {}
    for name, (val, _) in data.by_source.items():  # each source's held-out set is its own tail, as alone
        alone = build_data(DataConfig(source=str(corpora / name), val_fraction=0.2 if name == "b" else 0.1, prefetch=0),
                           batch_size=2)
        assert np.array_equal(val.read(0, len(val)), alone.val.read(0, len(alone.val)))
        held[name] = set(doc_ids(decoded_documents(val, data.tokenizer.decode)))
    assert held["a"] and held["b"] and not (held["a"] | held["b"]) & set(ids)  # never trained on
    missing = (set(range(600)) | set(range(10_000, 10_600))) - set(ids) - held["a"] - held["b"]
    assert missing <= {min(held["a"]) - 1, min(held["b"]) - 1}  # all trained on or held out, but what the cut splits
    assert len(data.val) == sum(len(v) for v, _ in data.by_source.values()) and data.doc_reset
    again = build_data(cfg, batch_size=2, seq_len=32, seed=7)  # what a resume builds: the same stream
    assert np.array_equal(again.train.stream.read(0, len(train)), train.read(0, len(train)))
    other = build_data(cfg, batch_size=2, seq_len=32, seed=8).train.stream
    assert not np.array_equal(other.read(0, 5000), train.read(0, 5000))  # the seed draws the order


def test_a_weight_too_small_for_its_sources_size_is_refused_before_the_index_is_built(monkeypatch):
    import bdh_scale.data.mixture.stretch as mixstretch
    from bdh_scale.errors import DataError

    monkeypatch.setattr(mixstretch, "MAX_DRAWS", 10_000)  # europarl_fr's 229 pieces at 1%: 22,900 draws
    with pytest.raises(DataError, match=r"^data.sources\[1\]: 'europarl_fr' has 229 documents or pieces at weight "
                                        r"0.01, so about 22,900 draws"):
        build_data(DataConfig(sources=[entry("europarl_en", 0.99), entry("europarl_fr", 0.01)]), batch_size=2)


# -- stream lanes --------------------------------------------------------------------------------

def epoch_documents(data) -> list[str]:
    """The training documents this rank's stream holds in its first epoch, in order."""
    out = []
    for unit in data.train.docs.units():
        if unit.position.epoch > 0:
            return out
        out += [r.decode() if isinstance(r, bytes) else r for r in unit.rows]


@pytest.mark.parametrize("files", [2, 1])  # 2 files a source: whole files per rank; 1: every other draw
def test_stream_lanes_interleave_by_weight_and_ranks_read_disjoint_draws(tmp_path, files):
    for name, start in (("a", 0), ("b", 10_000)):
        write_corpus(tmp_path / name, shards=files, per_shard=600 // files, start=start)
    cfg = DataConfig(sources=[entry(tmp_path / "a", 0.75), entry(tmp_path / "b", 0.25)], lanes="stream",
                     val_tokens=1500, workers=0)
    built = [build_data(cfg, batch_size=2, world_size=w, rank=r, seq_len=32, seed=3)
             for w, r in ((1, 0), (2, 0), (2, 1))]
    try:
        whole, *ranks = [epoch_documents(d) for d in built]
        decode = built[0].tokenizer.decode
        held = {name: set(doc_ids(decoded_documents(val, decode))) for name, (val, _) in built[0].by_source.items()}
        assert all(np.array_equal(d.val.read(0, len(d.val)), built[0].val.read(0, len(built[0].val))) for d in built)
    finally:
        for d in built:
            d.close()
    assert held["a"] == set(range(len(held["a"]))) and held["b"] == set(range(10_000, 10_000 + len(held["b"])))
    ids = doc_ids(whole)
    assert abs(sum(i < 10_000 for i in ids) / len(ids) - 0.75) < 0.03  # about 2,300 draws; standard error 0.009
    assert set(ids) == (set(range(600)) - held["a"]) | (set(range(10_000, 10_600)) - held["b"])  # none held out
    if files == 1:  # every W-th draw of the one interleave: the ranks' draws are disjoint and make it whole
        assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]
    else:  # each rank interleaves its own files of every source, with the same weights
        assert not set(ranks[0]) & set(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(whole)
        for mine in ranks:
            assert abs(sum(i < 10_000 for i in doc_ids(mine)) / len(mine) - 0.75) < 0.05


def test_a_streamed_source_of_running_text_is_mixed_in_pieces_and_held_out_by_its_first_pieces(tmp_path):
    write_corpus(tmp_path / "a", shards=1, per_shard=300)
    (tmp_path / "t.txt").write_text("".join(f"line {i:05d}\n" for i in range(3000)))
    cfg = DataConfig(sources=[entry(tmp_path / "a", 0.5), entry(tmp_path / "t.txt", 0.5, val_tokens=400)],
                     lanes="stream", val_tokens=1000, workers=0)
    data = build_data(cfg, batch_size=2, seq_len=32)
    try:
        docs = epoch_documents(data)
        val = data.by_source["t"][0]
        held_text = data.tokenizer.decode(val.read(0, len(val)).tolist())
    finally:
        data.close()
    pieces = [d for d in docs if d.startswith("line ")]
    assert pieces and all(p.count("\n") in (32, 3000 % 32) for p in pieces)  # 32 lines a draw (the last: fewer)
    assert held_text.startswith("line 00000\n") and len(val) == 400
    # 400 tokens are held out from the first two pieces of 352 bytes: those two are never trained on
    assert min(int(p[5:10]) for p in pieces) == 64


def test_a_hub_dataset_mixes_with_local_files_each_read_with_its_own_settings(tmp_path, monkeypatch):
    import json

    import datasets

    import bdh_scale.data.sources.hub as hub

    write_corpus(tmp_path / "a", shards=1, per_shard=200)
    pairs = [{"translation": {"en": f"sentence {i}", "fr": f"phrase {i}"}} for i in range(400)]
    (tmp_path / "hub.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    real, calls = datasets.load_dataset, []
    monkeypatch.setattr(hub, "hub_commit", lambda cfg: "0123456789abcdef")

    def load(path, name=None, split=None, streaming=False, revision=None, **kw):  # the Hub, served from a local file
        calls.append((path, name, split, revision))
        return real("json", data_files=str(tmp_path / "hub.jsonl"), split="train", streaming=streaming)
    monkeypatch.setattr(datasets, "load_dataset", load)
    cfg = DataConfig(sources=[entry(tmp_path / "a", 0.5, doc_separator="|"),
                              entry("someone/europarl", 0.5, hub_config="fr-en", text_column="translation",
                                    translation=["fr", "en"], val_tokens=300)], val_tokens=800, workers=0)
    data = build_data(cfg, batch_size=2, seq_len=32)
    try:
        docs = epoch_documents(data)
        state = data.train.state_dict()
        held = data.by_source["europarl"][0]
        held_text = data.tokenizer.decode(held.read(0, len(held)).tolist())
    finally:
        data.close()
    assert calls[0] == ("someone/europarl", "fr-en", "train", "0123456789abcdef")
    assert state["revision"] == [None, "0123456789abcdef"]  # kept per source: a resume reads the same commit
    assert held_text.startswith("<FR:phrase 0>\n<EN:sentence 0>\n") and len(held) == 300
    mixed = [d for d in docs if d.startswith("<FR:")]
    assert mixed and all(d.count("<FR:") in (32, 400 % 32) for d in mixed)  # 32 pairs a draw
    assert all(d.endswith("|") for d in docs if d.startswith("<doc"))  # the separator of 'a' alone


@pytest.mark.parametrize("bad, message", [
    (entry("/nowhere/x.jsonl", 1), r"^data.sources\[1\].source: no such file or directory: '/nowhere/x.jsonl'"),
    ("text_column", r"^data.sources\[1\].text_column: 'body' is not a column of"),
])
def test_a_source_that_cannot_be_read_is_named_by_its_entry(corpora, bad, message):
    from bdh_scale.errors import DataError

    second = entry(corpora / "b", 1, text_column="body") if bad == "text_column" else bad
    with pytest.raises(DataError, match=message):
        build_data(DataConfig(sources=[entry(corpora / "a", 1), second]), batch_size=2)


# -- validation per source -----------------------------------------------------------------------

def test_each_source_is_validated_on_its_own_held_out_set_and_the_overall_figure_sums_them(corpora):
    import torch

    from bdh_scale.model import build_model
    from bdh_scale.model.config import ModelConfig
    from bdh_scale.train.evaluate import OneProcess, evaluate, evaluate_sources

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, vocab_size=256,
                                  dropout=0.0, attn_backend="parallel"))
    data = build_data(DataConfig(sources=[entry(corpora / "a", 0.5), entry(corpora / "b", 0.5, val_fraction=0.3)],
                                 prefetch=0), batch_size=2)
    kw = dict(T=32, batch_size=4, max_batches=3, accelerator=OneProcess("cpu"), carried=True, doc_reset=True)
    row = evaluate_sources(model, data, **kw).record(carry=True)
    alone = {}
    for name, val_fraction in (("a", 0.1), ("b", 0.3)):
        own = build_data(DataConfig(source=str(corpora / name), val_fraction=val_fraction, prefetch=0), batch_size=2)
        alone[name] = evaluate(model, own, **kw)
        assert math.isclose(row[f"val_loss/{name}"], alone[name].record(True)["val_loss"], rel_tol=1e-9)
        assert math.isclose(row[f"val_bpb/{name}"], row[f"val_loss/{name}"] / math.log(2))  # bytes: 1 per token
    assert row["val_loss/a"] != row["val_loss/b"]
    sums = [v.carried.total for v in alone.values()]
    assert math.isclose(row["val_loss"], float((sums[0][0] + sums[1][0]) / (sums[0][1] + sums[1][1])), rel_tol=1e-9)
    assert "ctx/carried_0-32" in row and "val_loss_window" in row


def test_a_mixture_run_logs_val_loss_per_source_in_metrics_and_trackers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train_in_process(tmp_path, "m", MIX, sources(("europarl_en", 0.7), ("europarl_fr", 0.3, {"name": "fr"})),
                              "train.max_steps=4", "train.eval_every=2", "train.batch_size=2",
                              "tracking.backend=tensorboard", "tracking.diagnostics=false",
                              "tracking.eval_sample_tokens=0")
    rows = [r for r in metrics(result.run_dir) if "val_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert {"val_loss/europarl_en", "val_bpb/europarl_en", "val_loss/fr", "val_bpb/fr"} <= set(r)
        assert min(r["val_loss/europarl_en"], r["val_loss/fr"]) <= r["val_loss"] <= max(r["val_loss/europarl_en"],
                                                                                          r["val_loss/fr"])
    events = EventAccumulator(str(result.run_dir / "logs" / "bdh-scale")).Reload()
    logged = {e.step: e.value for e in events.Scalars("val_loss/fr")}
    assert logged == pytest.approx({r["step"]: r["val_loss/fr"] for r in rows}, rel=1e-6)
    assert result.final_val["val_loss/fr"] == rows[-1]["val_loss/fr"]


# -- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes, processes", [("stream", 1), ("stream", 2), ("stretch", 2)])
def test_a_mixture_stopped_and_resumed_gives_the_losses_of_an_uninterrupted_run(tmp_path, corpora, lanes, processes):
    mix = sources((corpora / "a", 0.6), (corpora / "b", 0.4, {"val_tokens": 800})) if lanes == "stream" else \
        sources(("europarl_en", 0.7), ("europarl_fr", 0.3))
    run = [MIX, mix, f"data.lanes={lanes}", "data.val_tokens=1500", "data.workers=1", "train.max_steps=4",
           "train.checkpoint_every=2", "train.state=carry", "train.batch_size=2", "train.resume=auto"]
    ref = train_process(processes, tmp_path / "ref", "s", *run)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = train_process(processes, tmp_path, "s", *run, env={"BDH_KILL_AT": "after_step:3"})
    assert killed.returncode != 0
    resumed = train_process(processes, tmp_path, "s", *run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000002 at step 2" in resumed.stdout
    run_dir, ref_dir = tmp_path / "s", tmp_path / "ref" / "s"
    assert losses(run_dir) == losses(ref_dir) and len(losses(ref_dir)) == 4  # bit for bit: the same tokens
    names = ["a", "b"] if lanes == "stream" else ["europarl_en", "europarl_fr"]
    val = [[r[f"val_loss/{names[1]}"] for r in metrics(d) if "val_loss" in r] for d in (run_dir, ref_dir)]
    assert val[0] == val[1] != []
    ends = [[rank_state(d / "checkpoints/step_00000004", r)["lanes"] for r in range(processes)] for d in (run_dir, ref_dir)]
    if lanes == "stream":  # validated on the held-out sets read back from held_out/a and held_out/b
        assert sorted(p.name for p in (run_dir / "held_out").iterdir()) == names
        assert [(e["position"], e["docs_dealt"]) for e in ends[0]] == [(e["position"], e["docs_dealt"]) for e in ends[1]]
    else:  # the two ranks' lanes: disjoint stretches of the one mixed stream
        assert ends[0] == ends[1] and not set(ends[0][0]["positions"]) & set(ends[0][1]["positions"])
