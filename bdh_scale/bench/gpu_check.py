"""`python -m bdh_scale.bench.gpu_check` (`make gpu-check`): what a GPU must show before a long run,
in one command, in at most 8 minutes on one H100/H200 (a table and JSON).

Training cases are the trainer itself (train.loop.train on a recipe with overrides), so the check
runs the code a real run runs: Accelerate's autocast and loss scaler, the attention kernels the
backend picks, torch.compile, FSDP.

    bf16 T=512/1024/2048, auto, eager          a ~114M-parameter BDH (4 layers, D=768, 4 heads,
    bf16 T=512/2048, auto, compiled            N=3072 per head), 16k tokens per step: tokens/s,
                                              MFU (perf.device_peak_flops), peak memory
    bf16 T=2048 with each attention backend    the whole-model step with parallel, chunked and fla
    fp16 T=1024                               the loss scaler with an overflow injected at step 3:
                                              exactly one step skipped, the loss finite
    fsdp T=1024                               accelerate launch --config_file launch/fsdp.yaml
                                              --num_processes 1: FSDP2 steps on one GPU

and one layer's attention on its own (bench/gpu_kernels.py): the fla adapter's contract, bf16
parity of fla, chunked and parallel at N = 256, 2048, 8192, and forward + backward time and peak
memory of each at T = 512, 2048, 8192. `make gpu-check` installs the [gpu] extra first
(flash-linear-attention, and a Triton with the fix for fla's gated backward on Hopper).

--dry-run runs the same cases at tiny shapes on whatever device there is (on a CPU: fp32, since
bf16 and fp16 fall back there, torch.compile with dynamo's eager backend, which traces the graphs
without generating kernels, and fla's kernel replaced by its plain-PyTorch stand-in): every code
path of the check, where no GPU is.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from bdh_scale.bench import gpu_kernels
from bdh_scale.utils.child import failure_line, free_port

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "shakespeare_cpu.yaml"  # its data (bundled tiny Shakespeare); the model is set below
MODEL = {"n_layer": 4, "n_embd": 768, "n_head": 4, "mlp_internal_dim_multiplier": 16, "dropout": 0.0}
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "mlp_internal_dim_multiplier": 4, "dropout": 0.0}
TOKENS_PER_STEP = 16384
OVERFLOW_STEP = 3
BACKENDS = ("parallel", "chunked", "fla")  # whole-model steps with each (auto is the eager case)
BUDGET_S = 480  # the check's own limit on one H100/H200


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bdh_scale.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on any device (the harness, not the GPU)")
    p.add_argument("--out", default="runs/gpu_check", help="directory for the runs and gpu_check.json")
    p.add_argument("--T", default=None, help="comma-separated window lengths (default 512,1024,2048; dry run 16,32)")
    p.add_argument("--steps", type=int, default=None, help="steps per case (default 10; dry run 3)")
    p.add_argument("--no-kernels", action="store_true", help="skip the attention-kernel parity and timing")
    return p.parse_args(argv)


def overrides(model: dict, T: int, B: int, steps: int, out: Path, name: str, precision: str, compile_: bool,
              backend: str = "auto") -> list:
    return [*(f"model.{k}={v}" for k, v in model.items()), f"model.attn_backend={backend}",
            f"train.seq_len={T}", f"train.batch_size={B}",
            f"train.max_steps={steps}", "train.warmup_steps=2", "train.log_every=1", "train.eval_batches=0",
            "train.keep_checkpoints=0", "train.sample_tokens=0", "train.progress=false", "train.max_time_s=null",
            # quoted: YAML would read a bare no as false
            f"train.mixed_precision='{precision}'", f"train.compile={str(compile_).lower()}",
            "tracking.eval_sample_tokens=0", f"train.out_dir={out}", f"train.run_name={name}"]


def summarize(run_dir: Path, warmup_rows: int) -> dict:
    """tokens/s and MFU over the logged steps after the warm-up ones (compilation, allocator)."""
    from bdh_scale.rundir import read_metrics

    rows = [r for r in read_metrics(run_dir) if "tokens_per_s" in r]
    steady = rows[warmup_rows:] or rows
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]  # null: above 1, flagged (diagnostics.MFU)
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(mfus) if mfus else None, "steps": rows[-1]["step"] if rows else 0,
            "final_loss": rows[-1]["loss"] if rows else None,
            "scaler_overflows": rows[-1].get("scaler_overflows") if rows else None,
            "bad_steps": rows[-1].get("bad_steps") if rows else None}


@contextmanager
def environment(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def eager_compile():
    """torch.compile with dynamo's eager backend (graphs traced, no kernels generated): the dry run's
    compile cases, which would otherwise spend minutes compiling C++ for a CPU."""
    original = torch.compile

    def compile_eager(*args, **kwargs):
        return original(*args, **{**kwargs, "backend": "eager"})

    torch.compile = compile_eager
    try:
        yield
    finally:
        torch.compile = original


def train_case(name: str, args: list, device_type: str, env: dict | None = None) -> tuple[dict, str | None]:
    """One in-process run of the trainer: (its summary, an error or None)."""
    from accelerate.state import AcceleratorState

    from bdh_scale.config import load_config
    from bdh_scale.train.loop import train

    AcceleratorState._reset_state(reset_partial_state=True)
    if device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with environment(**(env or {})):
            result = train(load_config(RECIPE, args))
    except Exception as e:  # a case that fails is a finding: report it, go on with the others
        return {"seconds": time.perf_counter() - t0}, gpu_kernels.first_line(e)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    out = {"seconds": time.perf_counter() - t0, "run_dir": str(result.run_dir)}
    if device_type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out | summarize(result.run_dir, warmup_rows=2), None


def check_overflow_skipped(run_dir: Path) -> str | None:
    """The step with the injected overflow was skipped by the scaler (its count rose by one there;
    the scaler may also skip steps of its own while it calibrates), none was bad, the loss is finite."""
    from bdh_scale.rundir import read_metrics

    rows = {r["step"]: r for r in read_metrics(run_dir) if "scaler_overflows" in r}
    rose = rows[OVERFLOW_STEP]["scaler_overflows"] - rows[OVERFLOW_STEP - 1]["scaler_overflows"]
    last = rows[max(rows)]
    if rose != 1 or last["bad_steps"] or last["loss"] is None:
        return (f"injected overflow at step {OVERFLOW_STEP}: scaler skips there {rose} (want 1), bad steps "
                f"{last['bad_steps']} (want 0), last loss {last['loss']}")
    return None


def fsdp_case(args: list) -> tuple[dict, str | None]:
    """FSDP2 through accelerate launch on one process (one GPU, or the CPU in a dry run)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch/fsdp.yaml"),
           "--num_processes", "1", "--main_process_port", str(free_port()),
           str(ROOT / "train.py"), str(RECIPE), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = {"seconds": time.perf_counter() - t0}
    if proc.returncode != 0:
        return out, failure_line(proc.stderr)
    if "distributed: FSDP2" not in proc.stdout:
        return out, "the run did not say it ran FSDP2"
    run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("train.out_dir="))) / "fsdp"
    return out | summarize(run_dir, warmup_rows=1), None


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bdh_scale.model.bdh.attention import fla

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type != "cuda" and not args.dry_run:
        print("error: no CUDA device here; run with --dry-run to check the harness on this machine", file=sys.stderr)
        return 2
    # The dry run's fla is the stand-in of its kernel (fla cannot run without a GPU).
    with fla.stand_in() if args.dry_run else nullcontext():
        return run_check(args, device_type)


def run_check(args, device_type: str) -> int:
    from bdh_scale.bench.cli import machine
    from bdh_scale.model.bdh.attention import fla
    from bdh_scale.utils.perf import compute_dtype, device_peak_flops

    dry = args.dry_run
    Ts = [int(t) for t in (args.T or ("16,32" if dry else "512,1024,2048")).split(",")]
    steps = args.steps or (3 if dry else 10)
    model, tokens = (TINY, 64) if dry else (MODEL, TOKENS_PER_STEP)
    out = Path(args.out)
    precision = "bf16" if device_type == "cuda" else "no"  # a CPU runs fp32 whatever a recipe asks
    started = time.perf_counter()
    peak = device_peak_flops(device_type, compute_dtype(precision))
    print(f"gpu check on {machine().get('gpu', device_type)}: model {model}, {tokens} tokens per step, "
          f"matmul peak {peak / 1e12:.3g} TFLOP/s ({precision}); fla: "
          f"{fla.unavailable(device_type) or 'ready'}" + (" | dry run (fla: the stand-in)" if dry else ""), flush=True)

    cases = []

    def case(name, T, compile_=False, backend="auto", prec=precision, env=None):
        with eager_compile() if dry and compile_ else nullcontext():
            row, error = train_case(name, overrides(model, T, max(1, tokens // T), steps if name != "fp16" else
                                                    max(steps, OVERFLOW_STEP + 1), out, name, prec, compile_, backend),
                                    device_type, env)
        cases.append({"case": name, "T": T, "compile": compile_, "backend": backend, "precision": prec, **row,
                      "error": error})
        report(cases[-1])
        return cases[-1]

    for T in Ts:
        case(f"{precision}-T{T}-eager", T)
    for T in (Ts[0], Ts[-1]):  # compiling costs a minute a length on a GPU: the shortest and the longest
        case(f"{precision}-T{T}-compiled", T, compile_=True)
    for backend in BACKENDS:
        case(f"{precision}-T{Ts[-1]}-{backend}", Ts[-1], backend=backend)
    T = Ts[len(Ts) // 2]
    fp16 = "fp16" if device_type == "cuda" else "no"
    row = case("fp16", T, prec=fp16, env={"BDH_INJECT_OVERFLOW_AT_STEP": str(OVERFLOW_STEP)})
    if row["error"] is None and fp16 == "fp16":
        row["error"] = check_overflow_skipped(Path(row["run_dir"]))
    row["case"] = "fp16-overflow"
    fsdp, error = fsdp_case(overrides(model, T, max(1, tokens // T), min(steps, 3), out, "fsdp", precision, False))
    cases.append({"case": "fsdp-1proc", "T": T, "compile": False, "backend": "auto", "precision": precision, **fsdp,
                  "error": error})
    report(cases[-1])

    kernels = None if args.no_kernels else attention_kernels(device_type, dry, compute_dtype(precision))
    total = time.perf_counter() - started
    print_table(cases)
    if kernels is not None:
        gpu_kernels.print_kernels(kernels["contract"], kernels["parity"], kernels["timing"])
    result = {"machine": machine(), "dry_run": dry, "model": model, "tokens_per_step": tokens,
              "matmul_peak_flops": peak, "seconds": total, "budget_s": BUDGET_S, "cases": cases, "kernels": kernels}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    failed = [c["case"] for c in cases if c["error"]]
    if kernels is not None:
        failed += [f"{r['form']}-N{r['N']}" for r in kernels["parity"] if r["error"]]
        failed += [f"{r['form']}-T{r['T']}" for r in kernels["timing"] if r["error"]]
    over = "" if dry or total <= BUDGET_S else f"; over its {BUDGET_S} s budget"
    print(f"{len(cases) - sum(bool(c['error']) for c in cases)}/{len(cases)} cases ok in {total:.0f} s{over}; "
          f"{out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def attention_kernels(device_type: str, dry: bool, dtype) -> dict:
    """bench/gpu_kernels.py at the check's shapes (tiny in a dry run)."""
    device = torch.device(device_type)
    H, N, D = (2, 16, 8) if dry else (MODEL["n_head"], MODEL["mlp_internal_dim_multiplier"] * MODEL["n_embd"]
                                      // MODEL["n_head"], MODEL["n_embd"])
    t0 = time.perf_counter()
    out = {"contract": gpu_kernels.contract(device),
           "parity": gpu_kernels.parity(device, dtype, (16, 32, 64) if dry else (256, 2048, 8192),
                                        32 if dry else 1024, D),
           "timing": gpu_kernels.timing(device, dtype, (16, 32, 64) if dry else (512, 2048, 8192),
                                        64 if dry else TOKENS_PER_STEP, H, N, D)}
    print(f"  attention kernels: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def report(case: dict) -> None:
    state = f"error: {case['error']}" if case["error"] else "ok"
    print(f"  {case['case']}: {case['seconds']:.0f} s, {state}", flush=True)


def print_table(cases: list) -> None:
    print(f"{'case':<22} {'T':>5} {'backend':<8} {'tokens/s':>10} {'MFU':>6} {'peak GB':>8} {'s':>5}  status")
    for c in cases:
        tps = f"{c['tokens_per_s']:,.0f}" if "tokens_per_s" in c else "-"
        mfu = f"{c['mfu']:.1%}" if c.get("mfu") is not None else "-"
        mem = f"{c['peak_gb']:.1f}" if "peak_gb" in c else "-"
        print(f"{c['case']:<22} {c['T']:>5} {c['backend']:<8} {tps:>10} {mfu:>6} {mem:>8} {c['seconds']:>5.0f}  "
              f"{c['error'] or 'ok'}")


if __name__ == "__main__":
    sys.exit(main())
