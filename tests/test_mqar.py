"""synthetic:mqar: the layout of an episode, its determinism and exact resume, the distance
curriculum, answer-only targets through lanes, loss and validation, and bad settings refused."""
import numpy as np
import pytest
import torch

from bdh_scale.data import DataConfig, build_data
from bdh_scale.data.synthetic.mqar import MQAR, MQARLanes
from bdh_scale.data.synthetic.mqar_config import MQARConfig
from bdh_scale.errors import ConfigError, DataError
from bdh_scale.model import BDH, ModelConfig
from bdh_scale.model.output import IGNORE
from bdh_scale.train.evaluate import OneProcess, evaluate
from tests.helpers.tiny_runs import main_in_process, snapshot

V, T, P = 256, 32, 4


def mqar(**kw) -> MQAR:
    return MQAR(MQARConfig(pairs=P, **kw), V, T)


@pytest.mark.parametrize("distance", [0, 1, 3])
def test_an_episode_states_its_pairs_then_asks_every_key_once_in_its_window(distance):
    ep = mqar().episode(np.random.default_rng(5), distance)
    tok = ep.tokens
    assert len(tok) == (distance + 1) * T
    keys, values = tok[0:2 * P:2], tok[1:2 * P:2]
    assert len(set(keys)) == P and all(1 <= k < V // 2 for k in keys) and all(V // 2 <= v < V for v in values)
    q = ep.queries
    assert len(q) == P and sorted(tok[q]) == sorted(keys)  # every key asked once
    first = 2 * P if distance == 0 else 0
    assert all(distance * T + first <= i < (distance + 1) * T - 1 for i in q)  # in the queries' window
    pair = dict(zip(keys, values))
    assert all(tok[i + 1] == pair[tok[i]] for i in q)  # the answer is the token after the query
    rest = np.ones(len(tok), bool)
    rest[:2 * P] = False
    rest[q] = rest[q + 1] = False
    assert (tok[rest] == 0).all()  # filler everywhere else


def test_values_drawn_from_the_keys_ids_share_their_vocabulary_and_keep_the_layout():
    upper, shared = mqar(), mqar(values="keys")
    a, b = upper.episode(np.random.default_rng(5), 0), shared.episode(np.random.default_rng(5), 0)
    values = b.tokens[1:2 * P:2]
    assert all(1 <= v < V // 2 for v in values) and not all(1 <= v < V // 2 for v in a.tokens[1:2 * P:2])
    assert np.array_equal(a.tokens[0:2 * P:2], b.tokens[0:2 * P:2]) and np.array_equal(a.queries, b.queries)
    assert (upper.value_ids, shared.value_ids) == (V // 2, V // 2 - 1)


def test_lanes_are_deterministic_resume_exactly_and_deal_the_same_lanes_to_any_number_of_processes():
    m = mqar(gap=[0, 2])
    one = MQARLanes(m, 4)
    batches = [one.next_batch(T) for _ in range(7)]
    again = MQARLanes(mqar(gap=[0, 2]), 4)
    assert all(torch.equal(a.x, again.next_batch(T).x) for a in batches)
    other_seed = MQARLanes(mqar(gap=[0, 2], seed=1), 4)
    assert not torch.equal(other_seed.next_batch(T).x, batches[0].x)
    saved = MQARLanes(m, 4)
    for _ in range(4):
        saved.next_batch(T)
    state = saved.state_dict()
    resumed = MQARLanes(m, 4)
    resumed.load_state_dict(state)
    nxt = saved.next_batch(T)
    got = resumed.next_batch(T)
    assert torch.equal(got.x, nxt.x) and torch.equal(got.y, nxt.y) and torch.equal(got.doc_start, nxt.doc_start)
    # the same state places the lanes of two processes: rank 1 holds lanes 2 and 3
    rank1 = MQARLanes(m, 2, world_size=2, rank=1)
    rank1.load_state_dict(state)
    assert torch.equal(rank1.next_batch(T).x, nxt.x[2:])
    with pytest.raises(DataError, match="seed"):
        MQARLanes(mqar(seed=3), 4).load_state_dict(state)
    with pytest.raises(DataError, match="data.mqar.window"):
        one.next_batch(T * 2)


def test_episodes_begin_at_window_starts_as_documents_and_first_batch_restarts():
    lanes = MQARLanes(mqar(gap=[0, 3]), 3)
    ends = np.zeros(3, int)
    for w in range(30):
        b = lanes.next_batch(T)
        assert b.restarted.all() == (w == 0)
        assert not b.doc_start[:, 1:].any()  # a document only ever starts at a window's first token
        ends += b.doc_start[:, 0].numpy()
    assert (ends >= 30 // 4).all()  # distances <= 3: an episode every 4 windows at the most


def test_the_distance_curriculum_follows_the_optimizer_step():
    """With 2 windows per step, an episode that begins at step s draws its distance from the range
    the schedule gives for s."""
    m = mqar(gap_schedule=[[0, 0, 0], [10, 2, 3]])
    lanes = MQARLanes(m, 4, windows_per_step=2)
    seen = {False: set(), True: set()}
    for w in range(80):
        lanes.next_batch(T)
        for e, start, ep in lanes.current:
            seen[start // 2 >= 10].add(ep.distance)
    assert seen[False] == {0} and seen[True] <= {2, 3} and seen[True]


def test_only_the_answers_are_targets_and_the_loss_and_validation_count_only_them(tiny_config):
    cfg = DataConfig(source="synthetic:mqar", score="answers", mqar=MQARConfig(pairs=P, window=T, gap=[0, 1],
                                                                               val_episodes=8))
    data = build_data(cfg, batch_size=4, seq_len=T)
    torch.manual_seed(0)
    model = BDH(tiny_config(vocab_size=V)).eval()
    saw_empty = False
    for _ in range(6):
        b = data.train.next_batch(T)
        scored = b.y != IGNORE
        assert torch.equal(b.y[scored], b.x[:, 1:][scored[:, :-1]]) if scored[:, :-1].any() else True
        assert (b.y[scored] >= V // 2).all()  # every scored target is a value
        out = model(b.x, b.y)
        per_token = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), b.y.clamp(min=0), reduction="none")
        if scored.any():
            assert torch.allclose(out.loss, per_token[scored].mean())
        row = model(b.x[:1], b.y[:1])
        if not (b.y[:1] != IGNORE).any():  # a window of the pairs alone: nothing to score, and no NaN
            saw_empty = True
            assert row.loss.item() == 0.0
    assert saw_empty
    val = evaluate(model, data, T=T, batch_size=4, max_batches=None, accelerator=OneProcess("cpu"), carried=True,
                   doc_reset=True)
    assert val.window.total[1] == 8 * P  # every held-out query counted once, nothing else
    row = val.record(carry=True)
    assert 0.0 <= row["val_answer_accuracy"] <= 1.0 and "val_answer_accuracy_window" in row


def test_all_targets_are_scored_unless_asked():
    data = build_data(DataConfig(source="synthetic:mqar", mqar=MQARConfig(pairs=P, window=T)), batch_size=2, seq_len=T)
    b = data.train.next_batch(T)
    assert (b.y != IGNORE).all() and torch.equal(b.y[:, :-1], b.x[:, 1:])


def test_passkey_marks_its_key_as_the_answer():
    from bdh_scale.data.synthetic.passkey_config import PasskeyConfig

    cfg = DataConfig(source="synthetic:passkey", score="answers", prefetch=0,
                     passkey=PasskeyConfig(episodes=20, min_gap=8, max_gap=16, max_lead=4, digits=3))
    data = build_data(cfg, batch_size=1, seq_len=64)
    text = []
    for _ in range(20):
        b = data.train.next_batch(64)
        text += [chr(t) for t, s in zip(b.y[0].tolist(), (b.y[0] != IGNORE).tolist()) if s]
    assert text and all(c.isdigit() for c in text)


BAD = [
    (["data.mqar.pairs=200"], "data.mqar.pairs: 200 distinct keys"),
    (["data.mqar.pairs=16"], "data.mqar.window: a window of 32 tokens cannot hold 16 pairs"),
    (["data.mqar.gap=[3,1]"], "data.mqar.gap: [3, 1] is not [min, max]"),
    (["data.mqar.gap_schedule=[[5,0,1]]"], "data.mqar.gap_schedule"),
    (["data.mqar.window=64"], "data.mqar.window: synthetic:mqar lays its episodes out in windows of 64"),
    (["data.mqar.filler_token=300"], "data.mqar.filler_token: 300"),
    (["data.source=tinyshakespeare"], "data.score: 'answers' scores the answers a synthetic source marks"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_a_bad_mqar_setting_is_one_error_line_before_step_1(tmp_path, capsys, extra, message):
    recipe = "recipes/mqar_cpu.yaml"
    code = main_in_process(recipe, f"train.out_dir={tmp_path}", "train.seq_len=32", "train.max_steps=2",
                           "data.mqar.window=null", *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len([line for line in err if line.startswith("error:")]) == 1 and message in err[-1], err
    assert snapshot(tmp_path) == {}  # nothing written


def test_config_refuses_backprop_through_windows_without_a_carried_state():
    from bdh_scale.config import TrainConfig

    with pytest.raises(ConfigError, match="train.bptt_windows"):
        TrainConfig(bptt_windows=2, state="reset")


def test_bdh_analyze_recall_scores_a_gpt_run_in_its_window_and_marks_longer_distances_out_of_reach(tmp_path, capsys):
    """The softmax control on the same episodes: distance 0 (pairs and queries in one window of T)
    is read in one forward, exactly the window reading BDH gets there; from distance 1 on the
    episode is longer than its window, so out of reach (null), not chance."""
    import json

    from bdh_scale.analysis import cli
    from bdh_scale.analysis.recall import mqar_recall, read_windows, recall_metrics
    from bdh_scale.config.recipe import run_config
    from bdh_scale.data.synthetic.mqar import mqar_for
    from bdh_scale.rundir import load_run
    from tests.helpers.tiny_runs import train_in_process

    run = train_in_process(tmp_path, "mqgpt", "data.source=synthetic:mqar", "data.score=answers",
                           f"data.mqar.pairs={P}", "data.mqar.val_episodes=8", "train.max_steps=2", "model.arch=gpt",
                           "model.token_shift=none", "train.batch_size=4", "train.eval_batches=2").run_dir
    capsys.readouterr()
    assert cli.main(["recall", str(run), "--distances", "0,1,2", "--episodes", "8", "--no-trackers"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: model.arch=gpt carries no state: its window reading alone (32 tokens), no carried reading; "
                   "out of reach: distances 1, 2"]
    report = json.loads((run / "analysis/recall.json").read_text())
    assert report["readings"] == ["window"] and report["reach_tokens"] == T and not report["stateful"]
    d0, *far = report["distances"]
    assert [(d["distance_windows"], d["out_of_reach"], d["window"]) for d in far] == [(1, True, None), (2, True, None)]
    assert not d0["out_of_reach"] and "carried" not in d0
    model, tokenizer = load_run(run)
    probes = mqar_for(run_config(run).data, tokenizer, T).probes(0, 8, seed=1)
    x = torch.as_tensor(np.stack([e.tokens for e in probes]))
    logits = read_windows(model.eval(), x, T, carried=False)  # BDH's window reading of the same episodes
    queries = torch.as_tensor(np.stack([e.queries for e in probes]))
    at = logits.gather(1, queries[..., None].expand(-1, -1, logits.size(-1))).flatten(0, 1)
    values = x.gather(1, queries + 1).flatten()
    assert d0["window"]["accuracy"] == pytest.approx((at.argmax(-1) == values).float().mean().item())
    assert d0["window"]["answer_loss"] == pytest.approx(torch.nn.functional.cross_entropy(at, values).item(), rel=1e-5)
    assert recall_metrics(report) == {"recall/window_d0": d0["window"]["accuracy"]}
    assert (run / "analysis/recall.png").stat().st_size > 1000
    bdh = BDH(ModelConfig(n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0)).eval()
    stateful = mqar_recall(bdh, mqar(), distances=[0, 1], episodes=4, seed=1, device="cpu")
    assert stateful["readings"] == ["carried", "window"] and stateful["reach_tokens"] is None
    assert all({"carried", "window"} <= set(d) and "out_of_reach" not in d for d in stateful["distances"])
