"""The passkey source: deterministic for a seed, the fact exactly at the asked distance, answers
scored exactly; and the recall measurement around it."""
import numpy as np
import pytest
import torch

from bdh_scale.analysis.recall import recall, score
from bdh_scale.data.synthetic.passkey import FACT, QUESTION, Passkey
from bdh_scale.data.synthetic.passkey_config import PasskeyConfig
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer
from bdh_scale.errors import ConfigError
from bdh_scale.model import ModelConfig, build_model

FILLER = np.frombuffer(b"".join(f"filler line {i} of the corpus.\n".encode() for i in range(400)), dtype=np.uint8)


def passkey(**kw) -> Passkey:
    return Passkey(PasskeyConfig(**{"episodes": 20, "max_gap": 300, **kw}), ByteTokenizer(), FILLER)


def test_the_same_seed_gives_the_same_stream_and_another_seed_another():
    a, b, c = passkey(seed=3).stream(), passkey(seed=3).stream(), passkey(seed=4).stream()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_every_episode_is_a_document_that_asks_for_its_own_key():
    tok = ByteTokenizer()
    tokens, starts, answers = passkey().stream()
    docs, marks = np.split(tokens, starts[1:]), np.split(answers, starts[1:])
    assert len(docs) == 20 and len(answers) == len(tokens)
    for doc, mark in zip(docs, marks):
        text = tok.decode(doc.tolist())
        key = text.split(FACT[0])[1][:5]
        assert key.isdigit() and text.endswith(f"{QUESTION}{key}.\n\n")
        assert tok.decode(doc[mark].tolist()) == key  # data.score=answers scores the key after the question, only


@pytest.mark.parametrize("gap", [16, 100, 256])
def test_probes_put_exactly_the_asked_distance_between_fact_and_question(gap):
    tok = ByteTokenizer()
    (group,) = passkey().probes(gap, 4, lead=10, seed=0)
    for e in group:
        raw = bytes(e.tokens.tolist())
        fact_end = raw.index(FACT[1].encode()) + len(FACT[1])
        question = raw.index(QUESTION.encode())
        assert question - fact_end == gap == e.gap
        key = raw[raw.index(FACT[0].encode()) + len(FACT[0]):][:5]
        assert bytes(e.tokens[e.answer].tolist()) == key and tok.decode(e.tokens[e.answer].tolist()).isdigit()


def test_answers_are_scored_exactly():
    (group,) = passkey().probes(32, 3, lead=0, seed=1)
    L, V = len(group[0].tokens) - 1, 256
    perfect = torch.full((3, L, V), -10.0)
    for i, e in enumerate(group):  # logits at t put all mass on token t + 1
        perfect[i, torch.arange(L), torch.as_tensor(e.tokens[1:])] = 10.0
    got = score(perfect, group, "cpu")
    assert got["exact"] == 3 and got["right"] == got["tokens"] == 15 and got["loss"] < 1e-4
    wrong = perfect.clone()
    e = group[0]
    pos = e.answer.start - 1 + 2  # the third key digit of the first episode
    wrong[0, pos] = wrong[0, pos].roll(1)
    got = score(wrong, group, "cpu")
    assert got["exact"] == 2 and got["right"] == 14


def test_recall_reports_both_readings_per_distance():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0)).eval()
    report = recall(model, passkey(), T=32, distances=[1, 2], episodes=4, lead=5, seed=0, device="cpu")
    assert [r["gap_tokens"] for r in report["distances"]] == [32, 64]
    assert report["readings"] == ["carried", "window"] and report["reach_tokens"] is None
    for r in report["distances"]:
        assert "out_of_reach" not in r
        for reading in ("carried", "window"):
            assert 0 <= r[reading]["exact_match"] <= 1 and r[reading]["answer_loss"] > 0


def test_a_stateless_model_is_scored_in_its_window_and_out_of_reach_past_it():
    """A GPT of 128 positions trained on windows of 128, distances in windows of 16: the tokens
    read from the fact on (fact, gap, question, key: 83 + gap) fit up to a gap of 45; such an
    episode is read in one forward, the longer gaps are null."""
    torch.manual_seed(0)
    gpt = build_model(ModelConfig(arch="gpt", n_layer=1, n_embd=16, n_head=2, block_size=128, dropout=0.0)).eval()
    report = recall(gpt, passkey(), T=16, distances=[0, 2, 3], episodes=3, lead=4, seed=0, device="cpu", reach=128)
    assert report["readings"] == ["window"] and report["reach_tokens"] == 128 and not report["stateful"]
    near, far = report["distances"][:2], report["distances"][2]
    assert far == {"distance_windows": 3, "gap_tokens": 48, "episodes": 3, "out_of_reach": True, "window": None}
    for r in near:
        assert not r["out_of_reach"] and "carried" not in r
        (group,) = passkey().probes(r["gap_tokens"], 3, lead=4, seed=0)
        x = torch.as_tensor(np.stack([e.tokens[:-1] for e in group]))
        with torch.no_grad():
            direct = score(gpt(x).logits, group, "cpu")  # the whole episode, one forward
        assert r["window"]["answer_loss"] == pytest.approx(direct["loss"] / direct["tokens"], rel=1e-6)
        assert r["window"]["exact_match"] == direct["exact"] / 3


def test_a_stateless_model_reads_the_last_tokens_of_an_episode_that_fits_from_its_fact():
    """Past the lead, the window starts inside the filler before the fact: the answer is read
    from the last `reach` tokens, as generation would read it."""
    torch.manual_seed(0)
    gpt = build_model(ModelConfig(arch="gpt", n_layer=1, n_embd=16, n_head=2, block_size=128, dropout=0.0)).eval()
    report = recall(gpt, passkey(), T=16, distances=[2], episodes=2, lead=30, seed=0, device="cpu", reach=128)
    (r,) = report["distances"]
    assert not r["out_of_reach"]  # 30 + 83 + 32 = 145 tokens read, 115 of them from the fact on
    (group,) = passkey().probes(32, 2, lead=30, seed=0)
    x = torch.as_tensor(np.stack([e.tokens[:-1] for e in group]))
    cut = x.size(1) - 128
    with torch.no_grad():
        logits = torch.cat([torch.zeros(2, cut, 256), gpt(x[:, cut:]).logits], dim=1)
    direct = score(logits, group, "cpu")
    assert r["window"]["answer_loss"] == pytest.approx(direct["loss"] / direct["tokens"], rel=1e-6)


def test_episodes_laid_out_in_windows_begin_a_window_and_keep_their_fact_and_question_in_it():
    T = 128
    plain, aligned = passkey(max_gap=40, max_lead=8).stream(), passkey(max_gap=40, max_lead=8, window=T).stream()
    tokens, starts, answers = aligned
    assert (starts % T == 0).all() and len(tokens) % T == 0 and len(starts) == len(plain[1])
    raws = np.split(plain[0], plain[1][1:])
    for doc, mark, raw in zip(np.split(tokens, starts[1:]), np.split(answers, starts[1:]), raws):
        assert len(doc) == T and np.array_equal(doc[:len(raw)], raw)  # the episode, then filler to the window's end
        assert mark[:len(raw)].sum() == 5 and not mark[len(raw):].any()
    # unaligned, windows of T cut some episodes between their fact and their question
    fact_at = [s + bytes(plain[0][s:].tolist()).index(FACT[0].encode()) for s in plain[1]]
    answer_at = [np.flatnonzero(plain[2][s:])[0] + s for s in plain[1]]
    assert any(f // T != a // T for f, a in zip(fact_at, answer_at))


def test_aligned_lanes_and_held_out_rows_begin_at_episode_starts():
    from bdh_scale.config import load_config
    from bdh_scale.data import build_data

    cfg = load_config(None, ["data.source=synthetic:passkey", "train.seq_len=128", "data.passkey.window=128",
                             "data.passkey.max_gap=40", "data.passkey.max_lead=8", "data.passkey.episodes=200",
                             "train.eval_batches=4", "data.prefetch=0"])
    data = build_data(cfg.data, batch_size=3, world_size=2, rank=1, seq_len=128)
    for _ in range(6):
        batch = data.train.next_batch(128)
        assert batch.doc_start[:, 0].all()  # every lane's window is one whole episode
    for batch in data.val_batches(128, rows=4):
        assert batch.doc_start[:, 0].all()
    with pytest.raises(ConfigError, match="data.passkey.window: episodes laid out in windows of 64 tokens"):
        load_config(None, ["data.source=synthetic:passkey", "train.seq_len=128", "data.passkey.window=64"])


def test_impossible_settings_are_refused():
    with pytest.raises(ConfigError, match="data.passkey.min_gap"):
        PasskeyConfig(min_gap=100, max_gap=50)


def test_a_distance_longer_than_the_validation_rows_is_refused_at_load():
    from bdh_scale.config import load_config

    ok = load_config(None, ["data.source=synthetic:passkey", "train.seq_len=64", "train.eval_batches=20",
                            "data.passkey.max_gap=1000"])
    assert ok.data.passkey.max_gap == 1000
    with pytest.raises(ConfigError, match=r"data.passkey.max_gap: 2000 tokens is longer than the validation rows "
                                          r"\(train.eval_batches x T = 20 x 64 = 1280"):
        load_config(None, ["data.source=synthetic:passkey", "train.seq_len=64", "train.eval_batches=20",
                           "data.passkey.max_gap=2000"])


def test_a_probe_longer_than_the_filler_is_refused():
    from bdh_scale.errors import DataError

    with pytest.raises(DataError, match="passkey distance: 100000 tokens"):
        passkey().probes(100_000, 2, lead=0, seed=0)


def test_passkey_source_trains_with_document_resets_and_bdh_analyze_recall_writes_its_report(tmp_path, capsys):
    """A fresh-clone-sized run on the passkey source: episodes are documents, the loop resets the
    state at each, and bdh-analyze recall writes JSON and PNG; a GPT run gets its in-window
    reading, the distances past its window out of reach."""
    import json

    from bdh_scale.analysis import cli
    from bdh_scale.config.recipe import run_config
    from bdh_scale.data.synthetic.passkey import passkey_for
    from bdh_scale.rundir import load_run
    from tests.helpers.tiny_runs import train_in_process

    result = train_in_process(tmp_path, "pk", "data.source=synthetic:passkey", "data.passkey.episodes=120",
                              "data.passkey.max_gap=200", "train.max_steps=4", "train.state=carry",
                              "train.eval_batches=8", "model.forget_mode=data", "train.batch_size=2")
    cfg = yaml_config(result.run_dir)
    assert cfg["data"]["doc_reset"] is True  # resolved from the source and recorded
    assert cli.main(["recall", str(result.run_dir), "--distances", "0,1,2", "--episodes", "3"]) == 0
    report = json.loads((result.run_dir / "analysis/recall.json").read_text())
    assert [d["gap_tokens"] for d in report["distances"]] == [0, 32, 64]
    assert all("carried" in d and "window" in d and "out_of_reach" not in d for d in report["distances"])
    assert (result.run_dir / "analysis/recall.png").stat().st_size > 1000
    gpt = train_in_process(tmp_path, "pkgpt", "data.source=synthetic:passkey", "data.passkey.episodes=120",
                           "data.passkey.max_gap=200", "train.max_steps=2", "model.arch=gpt", "model.token_shift=none",
                           "train.seq_len=128", "model.block_size=128", "train.eval_batches=2", "train.batch_size=2")
    capsys.readouterr()
    assert cli.main(["recall", str(gpt.run_dir), "--seq-len", "16", "--distances", "0,1,4", "--episodes", "3",
                     "--lead", "4"]) == 0
    err = capsys.readouterr().err
    assert "carries no state" in err and "out of reach: distance 4" in err
    report = json.loads((gpt.run_dir / "analysis/recall.json").read_text())
    assert report["readings"] == ["window"] and report["reach_tokens"] == 128
    near, far = report["distances"][:2], report["distances"][2]
    assert far["out_of_reach"] and far["window"] is None and "carried" not in far
    model, tokenizer = load_run(gpt.run_dir)
    probes = passkey_for(run_config(gpt.run_dir).data, tokenizer)
    for r in near:  # the in-window numbers are those of one forward over each episode
        assert not r["out_of_reach"] and "carried" not in r
        (group,) = probes.probes(r["gap_tokens"], 3, 4, 1)
        with torch.no_grad():
            direct = score(model(torch.as_tensor(np.stack([e.tokens[:-1] for e in group]))).logits, group, "cpu")
        assert r["window"]["answer_loss"] == pytest.approx(direct["loss"] / direct["tokens"], rel=1e-5)
    assert (gpt.run_dir / "analysis/recall.png").stat().st_size > 1000
    assert cli.main(["recall", str(result.run_dir), "--distances", "a,b", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def yaml_config(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())
