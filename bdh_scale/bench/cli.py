"""`bdh-bench`: how fast the optimized BDH path trains and generates, against the plain formulation.

    python -m bdh_scale.bench                      # seed config, T sweep 256..2048, all variants
    python -m bdh_scale.bench --recipe recipes/shakespeare_cpu.yaml --T 128 --variants plain,auto
    python -m bdh_scale.bench --transformers       # generation through transformers against bdh-scale's

Every measurement runs in a fresh worker process (cases.py: what each variant is and how
it is measured). Step time is the median of several steps after warm-up, AdamW step included.
Shared machines are noisy and interference only ever adds time, so each training case runs
--repeats times, interleaved with the other variants, and the fastest run counts. FLOP/s count
the same model FLOPs for every variant (causal attention: each token attends to t earlier
tokens), so their ratio is the speed ratio, and the share of this machine's matmul peak
(measured here, with one large matmul) says how much is left.

Memory is a second sweep at a fixed batch (--mem-batch-size, default 1), so that what grows with
T shows: the peak of one training step, tracked tensor by tensor (parameters, gradients,
optimizer state, activations, temporaries), independent of allocator caching.

Generation is compared with its memory-traffic floor: a one-token step on the state must stream
every weight matrix and read and write rho, so bytes per token / measured read bandwidth (for a
working set of that size) is the fastest it can go on this machine. Results are printed and saved
as JSON under runs/bench/ with the machine description.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from bdh_scale.bench.bptt import bptt_sweep
from bdh_scale.bench.cases import MEASURES, PLAIN, VARIANTS, device
from bdh_scale.bench.workload import SEED, add_model_args, model_config
from bdh_scale.utils.child import failure_line
from bdh_scale.utils.perf import matmul_peak_flops, memory_bandwidth


# The seed work's M1 config (issue: state and performance targets are stated for it).
def run_worker(case: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bdh_scale.bench", "--worker", json.dumps(case)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": failure_line(proc.stderr)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fastest(cases: list[dict], repeats: int) -> list[dict]:
    """Run every case `repeats` times, round-robin, and keep each one's fastest result."""
    best: list[dict | None] = [None] * len(cases)
    for _ in range(repeats):
        for i, case in enumerate(cases):
            r = run_worker(case)
            if best[i] is None or "error" in best[i] or r.get("step_s", float("inf")) < best[i]["step_s"]:
                best[i] = r
    return best


def machine() -> dict:
    dev = device()
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(dev)}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def state_step_floor(model_cfg: dict, dev, tokens: int) -> dict:
    """Least time for `tokens` one-token steps on the state: each step must read every weight
    matrix once, and read rho twice (query, update) and write it once, per layer. The bandwidth
    is that of reading a buffer the size of those bytes, so a cache that holds the model (a
    server CPU's L3 can) counts as it does for the real steps; writes are counted as reads,
    which they are no faster than."""
    from bdh_scale.model import ModelConfig

    cfg = ModelConfig(**model_cfg)
    H, D, N = cfg.n_head, cfg.n_embd, cfg.n_neurons
    weights = cfg.n_layer * 3 * H * D * N + 2 * cfg.vocab_size * D
    rho = cfg.n_layer * H * N * D
    bytes_per_token = 4 * (weights + 3 * rho)
    bw = memory_bandwidth(dev, mbytes=max(8, bytes_per_token >> 20))
    return {"seconds": tokens * bytes_per_token / bw, "bytes_per_token": bytes_per_token, "gb_per_s": bw / 1e9}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bdh-bench", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--T", default="256,512,1024,2048", help="comma-separated sequence lengths")
    p.add_argument("--batch-tokens", type=int, default=2048, help="B = batch_tokens / T (tokens per step fixed)")
    p.add_argument("--batch-size", type=int, help="fixed B instead of --batch-tokens")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per run (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiled: at least 2)")
    p.add_argument("--repeats", type=int, default=2, help="runs per training case, interleaved; the fastest counts")
    p.add_argument("--mem-batch-size", type=int, default=1, help="B of the memory sweep (0 skips it)")
    p.add_argument("--gen-ctx", default="256,2048", help="contexts for generation ms/token ('' skips)")
    p.add_argument("--gen-tokens", type=int, default=32, help="timed generation steps per context")
    p.add_argument("--session-prompt", type=int, default=256, help="prompt length of the generation session")
    p.add_argument("--session-tokens", type=int, default=512, help="tokens of the generation session (0 skips)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--data", action="store_true", help="also measure the data pipeline: stretch lanes, and stream "
                   "lanes over generated local shards (1, 2, 4 workers, bytes and BPE, a 10x corpus)")
    p.add_argument("--data-only", action="store_true", help="only the data pipeline and the trainer's tokens/s "
                   "at the seed config (no model sweeps)")
    p.add_argument("--data-mb", type=float, default=40, help="size of the generated stream corpus, MB (10x for the "
                   "start-up and memory comparison)")
    p.add_argument("--data-tokens", type=int, default=8_000_000, help="tokens served per stream measurement "
                   "(a quarter of it for BPE)")
    p.add_argument("--bptt", default="", help="also measure train.bptt_windows: comma-separated k, e.g. 1,2,4 "
                   "(one step through k windows at the first --T, B = --batch-size or --batch-tokens / T)")
    p.add_argument("--bptt-only", action="store_true", help="only the --bptt sweep (no model sweeps)")
    p.add_argument("--out", default="runs/bench", help="directory for the JSON results")
    p.add_argument("--transformers", action="store_true", help="only generation ms/token through transformers' "
                   "generate against bdh-scale's; its own flags: bdh-bench --transformers --help")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--transformers" in argv:  # its own flags (bench/transformers_generate.py)
        from bdh_scale.bench import transformers_generate

        return transformers_generate.main([a for a in argv if a != "--transformers"])
    args = parse_args(argv)
    if args.worker:
        case = json.loads(args.worker)
        print(json.dumps(MEASURES[case["kind"]](case)))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        print(f"error: unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}", file=sys.stderr)
        return 2
    Ts = [int(t) for t in args.T.split(",") if t]
    model_cfg = model_config(args)
    dev = device()
    peak = matmul_peak_flops(dev, torch.bfloat16 if args.bf16 and dev.type == "cuda" else torch.float32)
    print(f"machine: {machine()}\nmatmul peak: {peak / 1e9:.1f} GFLOP/s\nmodel: {model_cfg}\n"
          f"training: fastest of {args.repeats} interleaved runs, each the median of {args.steps} steps")

    if args.bptt_only and not args.bptt:
        print("error: --bptt-only needs --bptt k,... (e.g. --bptt 1,2,4)", file=sys.stderr)
        return 2
    if args.bptt_only:
        rows, mem, gen, session = [], [], [], {}
    elif args.data_only:
        rows, mem, gen, session = [trainer_rate(args, model_cfg)], [], [], {}
    else:
        rows = train_sweep(args, variants, Ts, model_cfg, peak)
        mem = memory_sweep(args, variants, Ts, model_cfg)
        gen = generation(args, variants, model_cfg)
        session = generation_session(args, model_cfg, dev)
    data = data_pipeline(args, rows, Ts) if args.data or args.data_only else None

    bptt = None
    if args.bptt:
        B = args.batch_size or max(1, args.batch_tokens // Ts[0])
        bptt = bptt_sweep(run_worker, model_cfg, [int(k) for k in args.bptt.split(",") if k], Ts[0], B,
                          args.steps, args.warmup)
    summary = {**summarize(rows, mem, gen, session, Ts), **(bptt["ratios"] if bptt else {})}
    if summary:
        print("\nratios (same run):")
        for k, val in summary.items():
            print(f"  {k}: {val:.2f}")
    result = {"machine": machine(), "matmul_peak_flops": peak, "model": model_cfg, "train": rows, "memory": mem,
              "generate": gen, "session": session, "data": data, "bptt": bptt, "ratios": summary,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")
    print(json.dumps({"ratios": summary}))
    return 0


def trainer_rate(args, model_cfg) -> dict:
    """The trainer's tokens/s at the seed window (auto, T = 256, B = 8), the fastest of --repeats runs."""
    from bdh_scale.bench.data import STREAM_B, STREAM_T

    case = {"kind": "train", "model": model_cfg, "variant": "auto", "T": STREAM_T, "batch_size": STREAM_B,
            "steps": args.steps, "warmup": args.warmup, "bf16": args.bf16}
    (r,) = fastest([case], args.repeats)
    print(f"trainer: {r.get('tokens_per_s', float('nan')):.0f} tokens/s (auto, T={STREAM_T}, B={STREAM_B})")
    return {"variant": "auto", "T": STREAM_T, "batch_size": STREAM_B, **r}


def data_pipeline(args, rows, Ts) -> dict:
    """Stretch lanes of the bundled corpus, then stream lanes over generated shards, against the
    trainer's tokens/s at the seed window from this run."""
    import tempfile

    from bdh_scale.bench.data import STREAM_B, STREAM_T, bench_data, bench_stream
    from bdh_scale.data import DataConfig

    stretch = bench_data(DataConfig(), T=Ts[0], B=args.batch_size or max(1, args.batch_tokens // Ts[0]), steps=200)
    print(f"\nstretch lanes (bundled tinyshakespeare): {stretch['serve_tokens_per_s']:.0f} tokens/s served, "
          f"built in {stretch['build_s']:.2f} s")
    trainer = next((r["tokens_per_s"] for r in rows if r.get("variant") == "auto" and r.get("T") == STREAM_T
                    and r.get("batch_size") == STREAM_B and "tokens_per_s" in r), None)
    with tempfile.TemporaryDirectory(prefix="bdh-bench-data-") as tmp:
        stream = bench_stream(run_worker, Path(tmp), trainer, mbytes=args.data_mb, tokens=args.data_tokens)
    for k, v in stream["summary"].items():
        print(f"  {k}: {v:.2f}")
    return {"stretch": stretch, "stream": stream}


def train_sweep(args, variants, Ts, model_cfg, peak) -> list[dict]:
    rows = []
    print(f"\n{'variant':>11} {'T':>5} {'B':>3} {'tok/s':>9} {'step ms':>9} {'GFLOP/s':>8} {'%peak':>6}")
    for T in Ts:
        B = args.batch_size or max(1, args.batch_tokens // T)
        cases = [{"kind": "train", "model": model_cfg, "variant": v, "T": T, "batch_size": B, "steps": args.steps,
                  "warmup": max(args.warmup, 2) if v == "compiled" else args.warmup, "bf16": args.bf16}
                 for v in variants]
        for v, r in zip(variants, fastest(cases, args.repeats)):
            r = {"variant": v, "T": T, "batch_size": B, **r}
            rows.append(r)
            if "error" in r:
                print(f"{v:>11} {T:>5} {B:>3}  error: {r['error']}")
                continue
            r["share_of_peak"] = r["model_flops_per_s"] / peak
            print(f"{v:>11} {T:>5} {B:>3} {r['tokens_per_s']:>9.0f} {1000 * r['step_s']:>9.1f} "
                  f"{r['model_flops_per_s'] / 1e9:>8.1f} {100 * r['share_of_peak']:>5.1f}%", flush=True)
    return rows


def memory_sweep(args, variants, Ts, model_cfg) -> list[dict]:
    if not args.mem_batch_size:
        return []
    B = args.mem_batch_size
    kinds = ("param", "grad", "opt", "act", "temp")
    print(f"\npeak memory of one training step at B={B}, MB (tracked tensors)\n"
          f"{'variant':>11} {'T':>5} {'peak':>7} " + " ".join(f"{k:>6}" for k in kinds))
    mem = []
    for T in Ts:
        for v in [v for v in variants if v not in ("compiled", "plain+reuse")]:
            case = {"kind": "memory", "model": model_cfg, "variant": v, "T": T, "batch_size": B, "bf16": args.bf16}
            r = {"variant": v, "T": T, "batch_size": B, **run_worker(case)}
            mem.append(r)
            if "error" in r:
                print(f"{v:>11} {T:>5}  error: {r['error']}")
                continue
            print(f"{v:>11} {T:>5} {r['peak_mb']:>7.0f} "
                  + " ".join(f"{r['by_kind_mb'].get(k, 0):>6.0f}" for k in kinds), flush=True)
    return mem


def generation(args, variants, model_cfg) -> list[dict]:
    ctxs = [int(c) for c in args.gen_ctx.split(",") if c]
    gen = []
    if ctxs:
        print(f"\n{'variant':>11} {'context':>8} {'ms/token':>9}")
    for ctx in ctxs:
        for v in [x for x in variants if x in ("plain", "auto", "chunked")]:
            case = {"kind": "generate", "model": model_cfg, "variant": v, "ctx": ctx, "tokens": args.gen_tokens}
            r = {"variant": v, "ctx": ctx, **run_worker(case)}
            gen.append(r)
            print(f"{v:>11} {ctx:>8} {r.get('ms_per_token', float('nan')):>9.2f}"
                  + (f"  error: {r['error']}" if "error" in r else ""), flush=True)
    return gen


def generation_session(args, model_cfg, dev) -> dict:
    if not args.session_tokens:
        return {}
    session = {}
    for v in ("plain", "auto"):
        case = {"kind": "session", "model": model_cfg, "variant": v, "prompt": args.session_prompt,
                "tokens": args.session_tokens}
        session[v] = run_worker(case)
    session["floor"] = state_step_floor(model_cfg, dev, args.session_tokens)
    if all("seconds" in r for r in session.values()):
        print(f"\ngenerate {args.session_tokens} tokens after a {args.session_prompt}-token prompt: "
              f"generate() {session['auto']['seconds']:.2f} s, plain re-forward {session['plain']['seconds']:.1f} s "
              f"(estimated from 3 forwards); memory-traffic floor of the state steps "
              f"{session['floor']['seconds']:.2f} s ({session['floor']['gb_per_s']:.1f} GB/s measured)")
    return session


def summarize(rows, mem, gen, session, Ts) -> dict:
    """The ratios the performance targets are stated in."""
    tps = {(r["variant"], r["T"]): r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    peak = {(r["variant"], r["T"]): r["peak_mb"] for r in mem if "peak_mb" in r}
    ms = {(r["variant"], r["ctx"]): r["ms_per_token"] for r in gen if "ms_per_token" in r}
    out = {}
    lo, hi = min(Ts), max(Ts)
    for v in ("auto", "compiled", "chunked", "parallel"):
        for T in (lo, hi):
            for base in PLAIN:
                if (v, T) in tps and (base, T) in tps:
                    out[f"{v}/{base} tokens/s at T={T}"] = tps[(v, T)] / tps[(base, T)]
        if (v, hi) in tps and (v, lo) in tps:
            out[f"{v} tokens/s T={hi} / T={lo}"] = tps[(v, hi)] / tps[(v, lo)]
    for T in sorted({T for _, T in tps}):  # what train.compile buys: the same step, compiled or eager
        if ("compiled", T) in tps and ("auto", T) in tps:
            out[f"compiled/eager steps/s at T={T}"] = tps[("compiled", T)] / tps[("auto", T)]
    if ("chunked", hi) in tps and ("parallel", hi) in tps:
        out[f"chunked/parallel tokens/s at T={hi}"] = tps[("chunked", hi)] / tps[("parallel", hi)]
    if ("chunked", hi) in peak and ("parallel", hi) in peak:
        out[f"chunked/parallel peak memory at T={hi}"] = peak[("chunked", hi)] / peak[("parallel", hi)]
    if ("chunked", hi) in peak and ("chunked", hi // 2) in peak:
        out[f"chunked peak memory T={hi} / T={hi // 2}"] = peak[("chunked", hi)] / peak[("chunked", hi // 2)]
    ctxs = sorted({c for _, c in ms})
    for v in ("auto", "chunked"):
        if len(ctxs) >= 2 and (v, ctxs[-1]) in ms and (v, ctxs[0]) in ms:
            out[f"{v} generation ms/token ctx={ctxs[-1]} / ctx={ctxs[0]}"] = ms[(v, ctxs[-1])] / ms[(v, ctxs[0])]
        for c in ctxs:
            if (v, c) in ms and ("plain", c) in ms:
                out[f"plain/{v} generation ms/token at ctx={c}"] = ms[("plain", c)] / ms[(v, c)]
    if session and all("seconds" in r for r in session.values()):
        out["plain re-forward / generate() time"] = session["plain"]["seconds"] / session["auto"]["seconds"]
        out["plain re-forward / memory-traffic floor (best possible)"] = (session["plain"]["seconds"]
                                                                          / session["floor"]["seconds"])
    return out


if __name__ == "__main__":
    sys.exit(main())
