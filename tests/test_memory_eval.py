"""Validation as trained: a carry run is read carried along each held-out row, as its lanes are
read in training; every run also gets the independent-window figure; both are summed by context."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bdh_scale.data import DataConfig, build_data
from bdh_scale.model import BDH, ModelConfig
from bdh_scale.train.evaluate import context_edges, evaluate, my_rows

ONE = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"), unwrap_model=lambda m: m)
T, ROWS, BATCHES = 16, 3, 5


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = BDH(ModelConfig(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, dropout=0.0,
                          forget_mode="scalar")).eval()
    data = build_data(DataConfig(source="tinyshakespeare", max_tokens=20_000, prefetch=0), batch_size=2)
    yield model, data
    data.close()


def explicit_loop(model, data):
    """Per row, window by window, the state carried by hand; per token its loss and row position."""
    batches = list(data.val_batches(T, ROWS, BATCHES))
    out = []
    for r in range(batches[0][0].size(0)):
        state = model.init_state(1)
        for k, batch in enumerate(batches):
            o = model(batch[0][r:r + 1], state=state)
            state = o.state
            losses = F.cross_entropy(o.logits[0].float(), batch[1][r], reduction="none")
            out += [(k * T + t, loss.item()) for t, loss in enumerate(losses)]
    return out


def test_carried_validation_equals_an_explicit_loop_over_the_rows(setup):
    model, data = setup
    val = evaluate(model, data, T=T, batch_size=ROWS, max_batches=BATCHES, accelerator=ONE, carried=True)
    per_token = explicit_loop(model, data)
    assert val.carried.mean() == pytest.approx(sum(loss for _, loss in per_token) / len(per_token), rel=1e-6)
    edges = context_edges(T, T * BATCHES)
    for (lo, hi), got in zip(zip(edges, edges[1:]), val.carried.bucket_means()):
        inside = [loss for pos, loss in per_token if lo <= pos < hi]
        assert got == pytest.approx(sum(inside) / len(inside), rel=1e-6)


def test_both_readings_agree_on_the_first_window_and_differ_after_it(setup):
    model, data = setup
    val = evaluate(model, data, T=T, batch_size=ROWS, max_batches=BATCHES, accelerator=ONE, carried=True)
    carried, window = val.carried.bucket_means(), val.window.bucket_means()
    assert carried[0] == pytest.approx(window[0], rel=1e-6)  # both start each row from an empty state
    assert carried[1] != pytest.approx(window[1], rel=1e-4)  # then the carried reading has read more
    row = val.record(carry=True)
    assert row["val_loss"] == row["val_loss_carried"] != row["val_loss_window"]
    assert val.record(carry=False)["val_loss"] == row["val_loss_window"]
    assert {f"ctx/carried_{lo}-{hi}" for lo, hi in zip(context_edges(T, T * BATCHES), context_edges(T, T * BATCHES)[1:])} <= set(row)


def test_context_buckets_double_from_one_window_to_the_row_length():
    assert context_edges(128, 128) == [0, 128]
    assert context_edges(128, 20 * 128) == [0, 128, 256, 512, 1024, 2048, 2560]
    assert context_edges(100, 400) == [0, 100, 200, 400]


@pytest.mark.parametrize("rows,world", [(8, 2), (5, 2), (3, 4)])
def test_rows_split_over_ranks_cover_every_row_once_and_every_rank_runs_as_often(rows, world):
    parts = [my_rows(rows, r, world) for r in range(world)]
    counted = [row for mine, w in parts for row, keep in zip(mine, w.tolist()) if keep]
    assert sorted(counted) == list(range(rows))
    assert len({len(mine) for mine, _ in parts}) == 1  # the same number of forwards on every rank


def test_a_state_reset_every_window_is_the_window_reading_and_never_reset_is_the_carried_one(setup):
    model, data = setup
    val = evaluate(model, data, T=T, batch_size=ROWS, max_batches=BATCHES, accelerator=ONE, carried=True,
                   spans=(1, 2, BATCHES))
    assert val.spans[1].mean() == pytest.approx(val.window.mean(), rel=1e-5)
    assert val.spans[BATCHES].mean() == val.carried.mean()
    assert val.spans[2].mean() not in (val.window.mean(), val.carried.mean())
