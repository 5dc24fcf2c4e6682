"""TBPTT lanes: disjoint contiguous streams per rank, exact epochs, restarts, resume, curriculum.

The token stream here is arange(N), so a token's value is its position: contiguity and
disjointness can be read straight off the batches.
"""

import numpy as np
import pytest
import torch

from bdh_scale.config import load_config
from bdh_scale.data import DataError, PrefetchLanes
from bdh_scale.data.lanes.stretch import StretchLanes as Lanes
from bdh_scale.data.lanes.tokens import TokenStream
from bdh_scale.errors import ConfigError
from bdh_scale.train.schedule import seq_len_at

N, B, W = 2_000, 3, 2


def stream(n=N, pieces=1):
    ids = np.arange(n, dtype=np.uint16)
    return TokenStream(np.array_split(ids, pieces))


def rank_lanes(rank, seed=0, prefetch=0, s=None):
    lanes = Lanes(s or stream(), batch_size=B, world_size=W, rank=rank, seed=seed)
    return PrefetchLanes(lanes, depth=prefetch) if prefetch else lanes


def draw(lanes, Ts):
    return [lanes.next_batch(T) for T in Ts]


@pytest.mark.parametrize("seed", [0, 1337])
def test_two_ranks_lanes_are_disjoint_contiguous_and_serve_each_token_once_per_epoch(seed):
    stretch = N // (W * B)
    T = 16
    steps = (stretch - 1) // T  # full windows in one epoch
    seen_by_lane = {}
    for rank in range(W):
        batches = draw(rank_lanes(rank, seed=seed), [T] * steps)
        x = torch.cat([b.x for b in batches], dim=1)  # (B, steps*T): the epoch's inputs
        y = torch.cat([b.y for b in batches], dim=1)
        for i in range(B):
            start = x[i, 0].item()
            assert start % stretch == 0  # each lane starts at a stretch boundary
            expected = torch.arange(start, start + steps * T)
            assert torch.equal(x[i], expected)  # contiguous: every token once, in order
            assert torch.equal(y[i], expected + 1)  # targets are inputs shifted by one
            seen_by_lane[rank * B + i] = set(range(start, start + stretch))
    all_tokens = [t for s in seen_by_lane.values() for t in s]
    assert len(all_tokens) == len(set(all_tokens)) == W * B * stretch  # disjoint, complete


def test_windows_overlap_by_one_token_and_cross_shard_boundaries():
    lanes = rank_lanes(1, s=stream(pieces=7))  # 7 pieces: windows straddle piece edges
    (x1, y1, _, _), (x2, _, _, _) = draw(lanes, [10, 10])
    assert torch.equal(y1[:, -1], x2[:, 0])
    assert torch.equal(x2[:, 0], x1[:, -1] + 1)


def test_restarted_true_on_first_batch_and_exactly_when_lanes_wrap():
    stretch = N // (W * B)  # 333 tokens: windows of T=50 -> 6 per epoch ((333-1)//50)
    lanes = rank_lanes(0)
    flags, starts = [], []
    for _ in range(14):
        x, _, r, _ = lanes.next_batch(50)
        flags.append(bool(r.all()))
        assert r.all() or not r.any()
        starts.append(x[0, 0].item())
    assert flags == [True] + [False] * 5 + [True] + [False] * 5 + [True, False]
    assert starts[6] == starts[0] == 0 and starts[5] == 250 and lanes.epoch == 2
    assert 250 + 51 <= stretch < 300 + 51  # the tail that cannot hold T+1 is where it wraps


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_mid_epoch_gives_identical_next_batches(prefetch):
    Ts = [8, 8, 8, 32, 32, 8, 64, 64, 64, 64, 64, 64]
    ref = draw(rank_lanes(1, seed=7, prefetch=prefetch), Ts)

    first = rank_lanes(1, seed=7, prefetch=prefetch)
    draw(first, Ts[:5])
    state = first.state_dict()
    draw(first, Ts[5:7])  # the worker has run ahead; state was taken before
    if prefetch:
        first.close()
    resumed = rank_lanes(1, seed=7, prefetch=prefetch)
    resumed.load_state_dict(state)
    rest = draw(resumed, Ts[5:])
    for a, b in zip(ref[5:], rest):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert resumed.tokens_served == sum(Ts) * B
    if prefetch:
        resumed.close()


def test_prefetch_state_is_position_of_last_batch_handed_out():
    plain, pre = rank_lanes(0), rank_lanes(0, prefetch=4)
    for T in [5, 5, 9]:
        a, b = plain.next_batch(T), pre.next_batch(T)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert pre.state_dict() == plain.state_dict()
    pre.close()


def test_state_from_one_rank_restores_another_but_a_different_layout_is_refused():
    r0, r1 = rank_lanes(0), rank_lanes(1)
    draw(r0, [20, 20])
    draw(r1, [20, 20])
    fresh1 = rank_lanes(1)
    fresh1.load_state_dict(r0.state_dict())  # lanes advance in lockstep
    assert torch.equal(fresh1.next_batch(20).x, r1.next_batch(20).x)
    other = Lanes(stream(), batch_size=B + 1, world_size=W, rank=0)
    with pytest.raises(DataError, match="do not match"):
        other.load_state_dict(r0.state_dict())


def test_curriculum_changes_T_at_the_scheduled_steps_and_lanes_stay_contiguous():
    schedule = [[0, 4], [3, 8], [5, 16]]
    Ts = [seq_len_at(step, schedule, 999) for step in range(8)]
    assert Ts == [4, 4, 4, 8, 8, 16, 16, 16]
    lanes = rank_lanes(0, prefetch=2)
    batches = draw(lanes, Ts)
    lanes.close()
    x = torch.cat([b.x for b in batches], dim=1)
    assert [b.x.shape[1] for b in batches] == Ts
    assert torch.equal(x[0], torch.arange(sum(Ts)))  # no token skipped or repeated
    assert not any(b.restarted.any() for b in batches[1:])


def test_seq_len_schedule_is_validated():
    assert seq_len_at(10, None, default=256) == 256
    for bad, msg in [([[5, 64]], "must be \\[0, T\\]"), ([[0, 64], [0, 128]], "strictly"),
                     ([[0, 0]], ">= 1"), ([[0, 64, 1]], "pair"), ([], "non-empty")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [f"train.seq_len_schedule={bad}"])


def test_corpus_shorter_than_one_window_per_lane_says_how_many_tokens_are_needed():
    lanes = Lanes(stream(100), batch_size=4, world_size=2, rank=0)
    with pytest.raises(DataError, match=r"2\*4\*\(16\+1\) = 136.*lower train.batch_size"):
        lanes.next_batch(16)
    lanes.next_batch(11)  # 100 // 8 = 12 tokens per lane: one window of 11+1 fits


def test_dropping_a_prefetching_lanes_object_stops_its_thread():
    import gc
    import threading

    def alive():
        return sum(t.name == "bdh-data-prefetch" and t.is_alive() for t in threading.enumerate())

    before = alive()
    lanes = rank_lanes(0, prefetch=2)
    lanes.next_batch(8)
    assert alive() == before + 1
    del lanes
    gc.collect()
    assert alive() == before
