"""train.compile: the training forward and backward of BDH compile to one graph each, with no graph
break, across its options (attention form, gates, window, differential attention, carried state,
document resets, the token shift, dropout, gradient checkpointing), and a sequence-length curriculum compiles once
per length (train/compute.py states the bound).

Graphs are read with AOTAutograd and compilers that only count what they are given (no code is
generated, so this costs seconds): the forward graph and the backward graph dynamo hands over,
and dynamo's own graph-break counter. A break would show as a second forward graph and a count.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters

from bdh_scale.model import BDH, ModelConfig


class GraphCounter:
    """A torch.compile backend that counts forward and backward graphs and runs them as traced."""

    def __init__(self):
        self.forward = self.backward = 0

        def fw(gm, _):
            self.forward += 1
            return gm.forward

        def bw(gm, _):
            self.backward += 1
            return gm.forward

        self.backend = aot_autograd(fw_compiler=fw, bw_compiler=bw)

    @staticmethod
    def breaks() -> int:
        return sum(counters["graph_break"].values())


OPTIONS = {
    "parallel-reference": dict(attn_backend="parallel"),
    "parallel-data_gate-diff": dict(attn_backend="parallel", forget_mode="data", diff_attn=True),
    "chunked-scalar_gate-carry": dict(attn_backend="chunked", forget_mode="scalar", carry=True),
    "chunked-data_gate-docs-carry": dict(attn_backend="chunked", forget_mode="data", docs=True, carry=True),
    "window-docs-carry": dict(attn_window=4, docs=True, carry=True),
    "token_shift_layer-docs-carry": dict(attn_backend="chunked", token_shift="layer", token_shift_kernel=3, docs=True,
                                         carry=True),
    "token_shift_embed-parallel": dict(attn_backend="parallel", token_shift="embed"),
    "checkpointing-dropout-chunked": dict(attn_backend="chunked", dropout=0.2, checkpointing=True, carry=True),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_training_forward_and_backward_compile_to_one_graph_each_without_breaks(name):
    opts = dict(OPTIONS[name])
    carry, docs, ckpt = opts.pop("carry", False), opts.pop("docs", False), opts.pop("checkpointing", False)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=2, vocab_size=64,
                    **{"dropout": 0.0, **opts})
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager, compiled = BDH(cfg), BDH(cfg)
    compiled.load_state_dict(eager.state_dict())
    counter = GraphCounter()
    compiled.compile(backend=counter.backend)
    idx = torch.randint(0, 64, (2, 25), generator=torch.Generator().manual_seed(0))
    ds = None
    if docs:
        ds = torch.zeros(2, 24, dtype=torch.bool)
        ds[0, 7] = ds[1, 0] = True
    losses, grads = [], []
    for m in (eager, compiled):
        m.train(), m.__setattr__("gradient_checkpointing", ckpt)
        state = m.init_state(2) if carry else None
        torch.manual_seed(1)  # the same dropout masks
        out = m(idx[:, :-1], idx[:, 1:], state=state, doc_start=ds)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append([p.grad for p in m.parameters()])
    assert (counter.forward, counter.backward, counter.breaks()) == (1, 1, 0)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # the graph is the model
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_curriculum_compiles_once_per_window_length(tmp_path, monkeypatch):
    """Three lengths over six steps with a carried state: three forward graphs, three backward
    graphs, whatever the stream position, and no fallback to eager (the budget covers them)."""
    from bdh_scale.train.compute import graph_budget
    from tests.helpers.tiny_runs import train_in_process

    counter = GraphCounter()
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter.backend))
    result = train_in_process(tmp_path, "curriculum", "train.compile=true", "train.state=carry", "train.max_steps=6",
                              "model.attn_backend=auto", "train.seq_len_schedule=[[0, 8], [2, 16], [4, 24]]",
                              "train.eval_batches=0")
    assert result.steps == 6
    assert (counter.forward, counter.backward, counter.breaks()) == (3, 3, 0)
    from bdh_scale.config import load_config
    from tests.helpers.tiny_runs import RECIPE

    tc = load_config(RECIPE, ["train.seq_len_schedule=[[0, 8], [2, 16], [4, 24]]"]).train
    assert torch._dynamo.config.recompile_limit >= graph_budget(tc) >= 3
