"""`bdh-bench`: how fast the optimized BDH path trains and generates, against the plain formulation.

    python -m bdh_scale.bench                      # seed config, T sweep 256..2048, all variants
    python -m bdh_scale.bench --recipe recipes/shakespeare_cpu.yaml --T 128 --variants plain,auto

Every measurement runs in a fresh subprocess, so its peak memory (max RSS on CPU, the caching
allocator's peak on CUDA) is its own. Step time is the median of several steps after warm-up,
AdamW step included. FLOP/s count the same model FLOPs for every variant (causal attention:
each token attends to t earlier tokens), so their ratio is the speed ratio, and the share of this
machine's matmul peak (measured here, with one large fp32/bf16 matmul) says how much is left.
Variants: plain (the reference formulation, model/plain.py), parallel, chunked, auto (what
attn_backend=auto picks for T) and compiled (auto under torch.compile, as train.compile=true).
Generation is also compared with its memory-traffic floor: a one-token step on the state must
stream every weight matrix and rho through memory, so bytes per token / measured copy bandwidth
is the fastest it can go on this machine.
Results are printed as a table and saved as JSON under runs/bench/ with the machine description.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .model.flops import flops_per_token
from .perf import matmul_peak_flops, memory_bandwidth, synchronize

# The seed work's M1 config (issue: state and performance targets are stated for it).
SEED = dict(n_layer=2, n_embd=256, n_head=4, mlp_internal_dim_multiplier=32, dropout=0.0)
VARIANTS = ("plain", "parallel", "chunked", "auto", "compiled")  # compiled: auto under torch.compile


# -- measurements, each run inside a worker process ---------------------------------------------

def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _build(model_cfg: dict, variant: str, device):
    from .model import BDH, BDHConfig
    from .model.plain import PlainBDH

    backend = {"plain": "parallel", "compiled": "auto"}.get(variant, variant)
    cfg = BDHConfig(**{**model_cfg, "attn_backend": backend})
    torch.manual_seed(0)
    model = BDH(cfg).to(device)
    if variant == "compiled":
        model.compile()  # as train.compile does; the warm-up steps absorb the compilation
    return (PlainBDH(model) if variant == "plain" else model), cfg


def measure_train(case: dict) -> dict:
    device = _device()
    model, cfg = _build(case["model"], case["variant"], device)
    B, T = case["batch_size"], case["T"]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.get("bf16", False))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    times = []
    for i in range(case["warmup"] + case["steps"]):
        synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            loss = model(idx[:, :-1], idx[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= case["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    step = statistics.median(times)
    flops = flops_per_token(cfg, T) * B * T / step
    return {"step_s": step, "tokens_per_s": B * T / step, "model_flops_per_s": flops,
            "peak_mem_mb": peak - base, "mem_kind": "cuda_allocated" if device.type == "cuda" else "max_rss_delta"}


@torch.no_grad()
def measure_generate(case: dict) -> dict:
    """ms per new token after a context of `ctx` tokens. BDH: one step on the carried state.
    plain: the reference way, a full forward over the whole prefix for every token."""
    device = _device()
    model, cfg = _build(case["model"], case["variant"], device)
    model.eval()
    ctx, n = case["ctx"], case["tokens"]
    idx = torch.randint(0, cfg.vocab_size, (1, ctx), device=device)
    times = []
    if case["variant"] == "plain":
        for _ in range(n + 1):
            synchronize(device)
            t0 = time.perf_counter()
            model(idx)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        times = times[1:]
    else:
        state = model(idx, return_state=True).state
        tok = idx[:, -1:]
        for _ in range(n + 2):
            synchronize(device)
            t0 = time.perf_counter()
            state = model(tok, state=state).state
            synchronize(device)
            times.append(time.perf_counter() - t0)
        times = times[2:]
    return {"ms_per_token": 1000 * statistics.median(times)}


@torch.no_grad()
def measure_session(case: dict) -> dict:
    """Seconds to generate `tokens` after a `prompt`-token prompt. BDH reads the prompt once and
    steps on its state. The plain way re-runs the forward over the whole prefix for every token;
    timing all of those would take minutes, so its total is a quadratic fit through forwards at
    three prefix lengths, summed over every prefix length (the fit is reported)."""
    device = _device()
    model, cfg = _build(case["model"], case["variant"], device)
    model.eval()
    P, n = case["prompt"], case["tokens"]
    idx = torch.randint(0, cfg.vocab_size, (1, P + n), device=device)
    if case["variant"] == "plain":
        lengths = [P, P + n // 2, P + n]
        secs = []
        for L in lengths:
            model(idx[:, :L])  # warm-up
            synchronize(device)
            t0 = time.perf_counter()
            model(idx[:, :L])
            synchronize(device)
            secs.append(time.perf_counter() - t0)
        import numpy as np

        coef = np.polyfit(lengths, secs, 2)
        total = float(sum(np.polyval(coef, L) for L in range(P, P + n)))
        return {"seconds": total, "estimated": True, "forward_s_at": dict(zip(map(str, lengths), secs))}
    model(idx[:, :8], return_state=True)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    state = model(idx[:, :P], return_state=True).state
    for t in range(P, P + n):
        state = model(idx[:, t:t + 1], state=state).state
    synchronize(device)
    return {"seconds": time.perf_counter() - t0, "estimated": False}


def state_step_floor(model_cfg: dict, device, tokens: int) -> dict:
    """Least time for `tokens` one-token steps on the state: each step must read every weight
    matrix once and read rho twice (query, update) and write it once, per layer."""
    from .model import BDHConfig

    cfg = BDHConfig(**model_cfg)
    H, D, N = cfg.n_head, cfg.n_embd, cfg.n_neurons
    weights = cfg.n_layer * 3 * H * D * N + 2 * cfg.vocab_size * D
    rho = cfg.n_layer * H * N * D
    bytes_per_token = 4 * (weights + 3 * rho)
    bw = memory_bandwidth(device)
    return {"seconds": tokens * bytes_per_token / bw, "bytes_per_token": bytes_per_token, "gb_per_s": bw / 1e9}


def machine() -> dict:
    device = _device()
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


# -- orchestration --------------------------------------------------------------------------------

def run_worker(case: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bdh_scale.bench", "--worker", json.dumps(case)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_config(args) -> dict:
    if args.recipe:
        from .config import load_config

        import dataclasses
        cfg = dataclasses.asdict(load_config(args.recipe, args.override).model)
        cfg["dropout"] = 0.0
        return cfg
    return dict(SEED)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bdh-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", help="take the model config from a recipe (default: the seed config)")
    p.add_argument("--override", nargs="*", default=[], help="section.key=value overrides of the recipe")
    p.add_argument("--T", default="256,512,1024,2048", help="comma-separated sequence lengths")
    p.add_argument("--batch-tokens", type=int, default=2048, help="B = batch_tokens / T (tokens per step fixed)")
    p.add_argument("--batch-size", type=int, help="fixed B instead of --batch-tokens")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--gen-ctx", default="256,2048", help="contexts for generation ms/token ('' skips)")
    p.add_argument("--gen-tokens", type=int, default=32, help="timed generation steps per context")
    p.add_argument("--session-prompt", type=int, default=256, help="prompt length of the generation session")
    p.add_argument("--session-tokens", type=int, default=512, help="tokens of the generation session (0 skips)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--data", action="store_true", help="also measure the data pipeline tokens/s")
    p.add_argument("--out", default="runs/bench", help="directory for the JSON results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        case = json.loads(args.worker)
        measure = {"train": measure_train, "generate": measure_generate, "session": measure_session}[case["kind"]]
        result = measure(case)
        print(json.dumps(result))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        print(f"error: unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}", file=sys.stderr)
        return 2
    Ts = [int(t) for t in args.T.split(",") if t]
    model_cfg = model_config(args)
    device = _device()
    peak = matmul_peak_flops(device, torch.bfloat16 if args.bf16 and device.type == "cuda" else torch.float32)
    print(f"machine: {machine()}\nmatmul peak: {peak / 1e9:.1f} GFLOP/s\nmodel: {model_cfg}")

    rows = []
    print(f"\n{'variant':>9} {'T':>5} {'B':>3} {'tok/s':>9} {'step ms':>9} {'GFLOP/s':>8} {'%peak':>6} {'mem MB':>8}")
    for T in Ts:
        B = args.batch_size or max(1, args.batch_tokens // T)
        for v in variants:
            case = {"kind": "train", "model": model_cfg, "variant": v, "T": T, "batch_size": B,
                    "steps": args.steps, "warmup": args.warmup, "bf16": args.bf16}
            r = {"variant": v, "T": T, "batch_size": B, **run_worker(case)}
            rows.append(r)
            if "error" in r:
                print(f"{v:>9} {T:>5} {B:>3}  error: {r['error']}")
                continue
            r["share_of_peak"] = r["model_flops_per_s"] / peak
            print(f"{v:>9} {T:>5} {B:>3} {r['tokens_per_s']:>9.0f} {1000 * r['step_s']:>9.1f} "
                  f"{r['model_flops_per_s'] / 1e9:>8.1f} {100 * r['share_of_peak']:>5.1f}% {r['peak_mem_mb']:>8.0f}")

    gen = []
    ctxs = [int(c) for c in args.gen_ctx.split(",") if c]
    if ctxs:
        print(f"\n{'variant':>9} {'context':>8} {'ms/token':>9}")
    for ctx in ctxs:
        for v in [x for x in variants if x in ("plain", "auto", "chunked")]:
            case = {"kind": "generate", "model": model_cfg, "variant": v, "ctx": ctx, "tokens": args.gen_tokens}
            r = {"variant": v, "ctx": ctx, **run_worker(case)}
            gen.append(r)
            print(f"{v:>9} {ctx:>8} {r.get('ms_per_token', float('nan')):>9.2f}" + (f"  error: {r['error']}" if "error" in r else ""))

    session = {}
    if args.session_tokens:
        for v in ("plain", "auto"):
            case = {"kind": "session", "model": model_cfg, "variant": v, "prompt": args.session_prompt,
                    "tokens": args.session_tokens}
            session[v] = run_worker(case)
        session["floor"] = state_step_floor(model_cfg, device, args.session_tokens)
        if all("seconds" in r for r in session.values()):
            print(f"\ngenerate {args.session_tokens} tokens after a {args.session_prompt}-token prompt: "
                  f"state {session['auto']['seconds']:.2f} s, plain re-forward {session['plain']['seconds']:.1f} s "
                  f"(estimated from 3 forwards); memory-traffic floor of the state steps "
                  f"{session['floor']['seconds']:.2f} s ({session['floor']['gb_per_s']:.1f} GB/s measured)")

    data = None
    if args.data:
        data = bench_data_pipeline(Ts[0], args.batch_size or max(1, args.batch_tokens // Ts[0]))
        print(f"\ndata pipeline: {json.dumps(data)}")

    summary = summarize(rows, gen, Ts)
    if all("seconds" in r for r in session.values()) and session:
        summary["plain re-forward / state generation time"] = session["plain"]["seconds"] / session["auto"]["seconds"]
        summary["plain re-forward / memory-traffic floor (best possible)"] = (session["plain"]["seconds"]
                                                                              / session["floor"]["seconds"])
    if summary:
        print("\nratios (same run):")
        for k, val in summary.items():
            print(f"  {k}: {val:.2f}")
    result = {"machine": machine(), "matmul_peak_flops": peak, "model": model_cfg, "train": rows,
              "generate": gen, "session": session, "data": data, "ratios": summary, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")
    print(json.dumps({"ratios": summary}))
    return 0


def bench_data_pipeline(T: int, B: int) -> dict:
    from .data import DataConfig, bench_data

    return {"bytes": bench_data(DataConfig(), T=T, B=B, steps=200)}


def summarize(rows, gen, Ts) -> dict:
    """The ratios the performance targets are stated in."""
    tps = {(r["variant"], r["T"]): r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    mem = {(r["variant"], r["T"]): r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r}
    ms = {(r["variant"], r["ctx"]): r["ms_per_token"] for r in gen if "ms_per_token" in r}
    out = {}
    lo, hi = min(Ts), max(Ts)
    for v in ("auto", "compiled", "chunked", "parallel"):
        for T in (lo, hi):
            if (v, T) in tps and ("plain", T) in tps:
                out[f"{v}/plain tokens/s at T={T}"] = tps[(v, T)] / tps[("plain", T)]
        if (v, hi) in tps and (v, lo) in tps:
            out[f"{v} tokens/s T={hi} / T={lo}"] = tps[(v, hi)] / tps[(v, lo)]
    if ("chunked", hi) in tps and ("parallel", hi) in tps:
        out[f"chunked/parallel tokens/s at T={hi}"] = tps[("chunked", hi)] / tps[("parallel", hi)]
        out[f"chunked/parallel peak memory at T={hi}"] = mem[("chunked", hi)] / max(mem[("parallel", hi)], 1e-9)
    half = hi // 2
    if ("chunked", hi) in mem and ("chunked", half) in mem:
        out[f"chunked peak memory T={hi} / T={half}"] = mem[("chunked", hi)] / max(mem[("chunked", half)], 1e-9)
    ctxs = sorted({c for _, c in ms})
    for v in ("auto", "chunked"):
        if len(ctxs) >= 2 and (v, ctxs[-1]) in ms and (v, ctxs[0]) in ms:
            out[f"{v} generation ms/token ctx={ctxs[-1]} / ctx={ctxs[0]}"] = ms[(v, ctxs[-1])] / ms[(v, ctxs[0])]
        for c in ctxs:
            if (v, c) in ms and ("plain", c) in ms:
                out[f"plain/{v} generation ms/token at ctx={c}"] = ms[("plain", c)] / ms[(v, c)]
    return out


if __name__ == "__main__":
    sys.exit(main())
