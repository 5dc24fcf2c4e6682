"""What train.bptt_windows costs: one optimizer step through k windows of T tokens per lane.

    python -m bdh_scale.bench --bptt 1,2,4 --T 256 --batch-size 8 --bptt-only

The step is the trainer's (train/step.py): k forwards, each starting from the state the one before
returned, kept in the graph; one backward of the mean loss; one AdamW step. So a step of k
windows reads k * B * T tokens, and what grows with k is the activations saved for the backward:
every window's, since the graph is only cut after the last. They are counted exactly, as the
bytes of the distinct storages autograd saves for the backward over the k forwards
(saved_tensors_hooks), beside the fixed bytes of parameters, gradients and AdamW's two moments.
(torch's MemTracker, used by the memory sweep, refuses a module called more than once in a
step, which k windows are.) The figures to compare are saved bytes against k (about linear) and
tokens/s against k (flat when a window's work dominates).
"""
from __future__ import annotations

import torch

from bdh_scale.bench.workload import build, device, median_time, optimizer


def _bptt_setup(case: dict):
    """(model, optimizer, step): the model's chunked, stateful path with the case's k windows."""
    dev = device()
    model, cfg = build(case["model"], "auto", dev)
    model.train()
    opt = optimizer(model, "auto", dev)
    k, B, T = case["k"], case["batch_size"], case["T"]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (k, B, T + 1), generator=g).to(dev)
    state = model.init_state(B)

    def step():
        nonlocal state
        s, total = state, 0.0
        for w in range(k):  # the state stays in the graph from window to window
            out = model(idx[w, :, :-1], idx[w, :, 1:], state=s, return_state=True)
            s, total = out.state, total + out.loss
        (total / k).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = s.detach()  # truncated BPTT: the next step starts from the values only

    return dev, model, opt, step


def saved_bytes(step, model) -> int:
    """Bytes of the distinct storages autograd saves for the backward while `step` runs, the
    parameters' own (counted as fixed) left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def measure_bptt(case: dict) -> dict:
    """Step time (median after warm-up), the bytes saved for the backward of one step over k
    windows, and the fixed bytes of parameters + gradients + AdamW moments."""
    dev, model, opt, step = _bptt_setup(case)
    secs = median_time(step, case.get("warmup", 1), case.get("steps", 3), dev)
    saved = saved_bytes(step, model)
    fixed = 4 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, grads, 2 moments
    tokens = case["k"] * case["batch_size"] * case["T"]
    return {"step_s": secs, "tokens_per_s": tokens / secs, "saved_mb": saved / 2**20, "fixed_mb": fixed / 2**20,
            "peak_mb": (saved + fixed) / 2**20}


def bptt_sweep(run_worker, model_cfg: dict, ks: list[int], T: int, B: int, steps: int, warmup: int) -> dict:
    """Every k in a fresh worker; a table, and each k's ratios to k = the smallest."""
    print(f"\ntrain.bptt_windows: one step through k windows of T={T}, B={B} lanes (auto backend)\n"
          f"{'k':>3} {'tok/s':>9} {'step ms':>9} {'saved MB':>9} {'fixed MB':>9}")
    rows = []
    for k in ks:
        case = {"kind": "bptt", "model": model_cfg, "k": k, "T": T, "batch_size": B, "steps": steps, "warmup": warmup}
        r = {"k": k, "T": T, "batch_size": B, **run_worker(case)}
        rows.append(r)
        if "error" in r:
            print(f"{k:>3}  error: {r['error']}")
            continue
        print(f"{k:>3} {r['tokens_per_s']:>9.0f} {1000 * r['step_s']:>9.1f} {r['saved_mb']:>9.1f} "
              f"{r['fixed_mb']:>9.1f}", flush=True)
    ok = [r for r in rows if "error" not in r]
    ratios = {}
    if len(ok) >= 2:
        base = ok[0]
        for r in ok[1:]:
            ratios[f"bptt k={r['k']}/k={base['k']} saved for backward"] = r["saved_mb"] / base["saved_mb"]
            ratios[f"bptt k={r['k']}/k={base['k']} saved + fixed"] = r["peak_mb"] / base["peak_mb"]
            ratios[f"bptt k={r['k']}/k={base['k']} tokens/s"] = r["tokens_per_s"] / base["tokens_per_s"]
    return {"rows": rows, "ratios": ratios}
