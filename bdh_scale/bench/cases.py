"""The measurements behind `bdh-bench`, each run in a fresh worker process (cli.py starts them),
so that its peak memory, its allocator setting and its compiled code are its own.

A case is a JSON dict: kind (train | memory | generate | session | bptt), the model config, the variant
and its sizes; or kind stream, a data-pipeline measurement (bench/data.py). Variants:

  plain        the reference formulation (model/bdh/plain.py), trained as the reference code trains:
               torch's default AdamW, in a process with the default allocator
  plain+reuse  the same, in a process that reuses freed host memory as bdh-scale's trainer does
  parallel, chunked, auto
               bdh-scale's model with that attention backend, its fused AdamW, heap reuse on CPU
  compiled     auto under torch.compile, as train.compile=true
"""
from __future__ import annotations

import time

import torch

from bdh_scale.bench.bptt import measure_bptt
from bdh_scale.bench.data import measure_stream
from bdh_scale.bench.workload import PLAIN, build, device, median_time, optimizer
from bdh_scale.model.flops import flops_per_token
from bdh_scale.utils.perf import synchronize

VARIANTS = ("plain", "plain+reuse", "parallel", "chunked", "auto", "compiled")


def _train_setup(case: dict):
    dev = device()
    model, cfg = build(case["model"], case["variant"], dev)
    model.train()
    opt = optimizer(model, case["variant"], dev)
    idx = torch.randint(0, cfg.vocab_size, (case["batch_size"], case["T"] + 1), device=dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=case.get("bf16", False))

    def step():
        with autocast:
            loss = model(idx[:, :-1], idx[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return dev, cfg, model, opt, step


def measure_train(case: dict) -> dict:
    """Median step time (forward, backward, optimizer step) after warm-up, and model FLOP/s."""
    dev, cfg, _, _, step = _train_setup(case)
    secs = median_time(step, case["warmup"], case["steps"], dev)
    B, T = case["batch_size"], case["T"]
    return {"step_s": secs, "tokens_per_s": B * T / secs,
            "model_flops_per_s": flops_per_token(cfg, T) * B * T / secs}


def measure_memory(case: dict) -> dict:
    """Peak memory of one training step, by kind, after a warm-up step (so that gradients and
    optimizer state exist). Tracked tensor by tensor (torch's MemTracker, on CPU and CUDA alike),
    not read off the process: the allocator's caching and the heap reuse do not count."""
    from torch.distributed._tools.mem_tracker import MemTracker

    _, _, model, opt, step = _train_setup(case)
    step()
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    mb = {str(k).split(".")[-1].lower(): v / 2**20 for k, v in peak.items()}
    return {"peak_mb": mb.pop("total"), "by_kind_mb": mb}


@torch.no_grad()
def measure_generate(case: dict) -> dict:
    """ms per new token after a context of `ctx` tokens. BDH: one in-place step on its state, as
    generate() takes it. plain: the reference way, a full forward over the whole prefix."""
    dev = device()
    model, cfg = build(case["model"], case["variant"], dev)
    model.eval()
    ctx, n = case["ctx"], case["tokens"]
    idx = torch.randint(0, cfg.vocab_size, (1, ctx), device=dev)
    if case["variant"] in PLAIN:
        step = lambda: model(idx)  # noqa: E731
    else:
        state = model(idx, return_state=True).state
        tok = idx[:, -1:]
        step = lambda: model(tok, state=state, update_state_in_place=True)  # noqa: E731
    return {"ms_per_token": 1000 * median_time(step, 2, n, dev)}


@torch.no_grad()
def measure_session(case: dict) -> dict:
    """Seconds to generate `tokens` after a `prompt`-token prompt. BDH: generate() itself, which
    reads the prompt once and steps on its state. The plain way re-runs the forward over the
    whole prefix for every token; timing all of those would take minutes, so its total is a
    quadratic fit through forwards at three prefix lengths, summed over every prefix length."""
    dev = device()
    model, cfg = build(case["model"], case["variant"], dev)
    model.eval()
    P, n = case["prompt"], case["tokens"]
    idx = torch.randint(0, cfg.vocab_size, (1, P + n), device=dev)
    if case["variant"] in PLAIN:
        import numpy as np

        lengths = [P, P + n // 2, P + n]
        secs = []
        for L in lengths:
            model(idx[:, :L])  # warm-up
            synchronize(dev)
            t0 = time.perf_counter()
            model(idx[:, :L])
            synchronize(dev)
            secs.append(time.perf_counter() - t0)
        coef = np.polyfit(lengths, secs, 2)
        total = float(sum(np.polyval(coef, L) for L in range(P, P + n)))
        return {"seconds": total, "estimated": True, "forward_s_at": dict(zip(map(str, lengths), secs))}
    model.generate(idx[:, :8], 8, top_k=40)  # warm-up
    synchronize(dev)
    t0 = time.perf_counter()
    model.generate(idx[:, :P], n, temperature=1.0, top_k=40)
    synchronize(dev)
    return {"seconds": time.perf_counter() - t0, "estimated": False}


MEASURES = {"train": measure_train, "memory": measure_memory, "generate": measure_generate,
            "session": measure_session, "stream": measure_stream,
            "bptt": measure_bptt}
