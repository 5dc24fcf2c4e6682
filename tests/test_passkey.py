"""The passkey source: deterministic for a seed, the fact exactly at the asked distance, answers
scored exactly; and the recall measurement around it."""
import numpy as np
import pytest
import torch

from bdh_scale.analysis.recall import recall, score
from bdh_scale.data.passkey import FACT, QUESTION, Passkey, PasskeyConfig
from bdh_scale.data.tokenizer import ByteTokenizer
from bdh_scale.errors import AnalysisError, ConfigError
from bdh_scale.model import BDHConfig, build_model

FILLER = np.frombuffer(b"".join(f"filler line {i} of the corpus.\n".encode() for i in range(400)), dtype=np.uint8)


def passkey(**kw) -> Passkey:
    return Passkey(PasskeyConfig(**{"episodes": 20, "max_gap": 300, **kw}), ByteTokenizer(), FILLER)


def test_the_same_seed_gives_the_same_stream_and_another_seed_another():
    a, b, c = passkey(seed=3).stream(), passkey(seed=3).stream(), passkey(seed=4).stream()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_every_episode_is_a_document_that_asks_for_its_own_key():
    tok = ByteTokenizer()
    tokens, starts = passkey().stream()
    docs = np.split(tokens, starts[1:])
    assert len(docs) == 20
    for doc in docs:
        text = tok.decode(doc.tolist())
        key = text.split(FACT[0])[1][:5]
        assert key.isdigit() and text.endswith(f"{QUESTION}{key}.\n\n")


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


def test_recall_reports_both_readings_per_distance_and_refuses_a_stateless_model():
    torch.manual_seed(0)
    model = build_model(BDHConfig(n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0)).eval()
    report = recall(model, passkey(), T=32, distances=[1, 2], episodes=4, lead=5, seed=0, device="cpu")
    assert [r["gap_tokens"] for r in report["distances"]] == [32, 64]
    for r in report["distances"]:
        for reading in ("carried", "window"):
            assert 0 <= r[reading]["exact_match"] <= 1 and r[reading]["answer_loss"] > 0
    gpt = build_model(BDHConfig(arch="gpt", n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(AnalysisError, match="carries no state"):
        recall(gpt, passkey(), T=32, distances=[1], episodes=2, lead=0, seed=0, device="cpu")


def test_impossible_settings_are_refused():
    with pytest.raises(ConfigError, match="data.passkey.min_gap"):
        PasskeyConfig(min_gap=100, max_gap=50)
