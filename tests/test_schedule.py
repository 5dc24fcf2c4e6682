import math

import pytest
import torch

from bdh_scale.train.schedule import lr_at, make_scheduler

KW = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)


def test_warmup_endpoints():
    assert 0 < lr_at(0, **KW) <= KW["lr"] / 10  # ~0 but not 0: the first step moves
    assert lr_at(KW["warmup_steps"], **KW) == pytest.approx(KW["lr"])
    ramp = [lr_at(s, **KW) for s in range(KW["warmup_steps"] + 1)]
    assert all(a < b for a, b in zip(ramp, ramp[1:]))


def test_min_at_max_steps_and_flat_after():
    assert lr_at(KW["max_steps"], **KW) == pytest.approx(KW["min_lr"])
    assert lr_at(KW["max_steps"] + 500, **KW) == KW["min_lr"]


def test_monotone_cosine_decay():
    lrs = [lr_at(s, **KW) for s in range(KW["warmup_steps"], KW["max_steps"] + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    mid = (KW["warmup_steps"] + KW["max_steps"]) // 2
    assert lr_at(mid, **KW) == pytest.approx((KW["lr"] + KW["min_lr"]) / 2)


def test_no_warmup_starts_at_lr():
    assert lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10) == 1.0


@pytest.mark.parametrize("bad", [dict(min_lr=2e-3), dict(lr=0.0), dict(warmup_steps=-1), dict(max_steps=5)])
def test_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        lr_at(0, **{**KW, **bad})


def test_scheduler_scales_each_group_base_lr():
    """A Muon-like group at 0.02 and an AdamW-like group at 1e-3 follow the same shape."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.02}, {"params": [b], "lr": KW["lr"]}])
    sched = make_scheduler(opt, **KW)
    for step in range(KW["max_steps"] + 3):
        factor = lr_at(step, **KW) / KW["lr"]
        assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * factor)
        assert opt.param_groups[1]["lr"] == pytest.approx(lr_at(step, **KW))
        opt.step()
        sched.step()


def test_scheduler_started_at_a_step_follows_the_schedule_it_is_given():
    """What a resumed run builds: the recipe's schedule (a new lr and max_steps) from the checkpoint's step."""
    p = torch.nn.Parameter(torch.zeros(1))
    longer = {**KW, "lr": KW["lr"] / 4, "min_lr": KW["min_lr"] / 4, "max_steps": 200}
    opt = torch.optim.SGD([p], lr=longer["lr"])
    sched = make_scheduler(opt, **longer, step=40)
    for step in range(40, 45):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, **longer))
        opt.step()
        sched.step()
    assert not math.isclose(lr_at(41, **longer), lr_at(41, **KW))
