"""Resident memory over a long run: every process of a training run (the trainer and its
tokenizer workers) sampled with psutil while it trains, per process the RSS first seen, after
warm-up, last and at most, printed as a table and saved as JSON.

    python -m bdh_scale.bench.soak --steps 3000                      # both cases below, runs/soak/soak.json
    python -m bdh_scale.bench.soak --steps 3000 --cases stream --every-s 0.5 model.n_embd=64   # overrides for every case

Cases (each a real trainer subprocess of recipes/shakespeare_cpu.yaml, run from the repository root):
  shakespeare  the recipe as it is (token lanes of the bundled corpus), max_steps=--steps
  stream       the recipe on stream lanes over a local JSON Lines corpus of tiny Shakespeare's
               lines (written under the output folder), data.workers=2, carried state; the
               corpus is read epoch after epoch, so every reader is opened and closed many times

"After warm-up" is the first sample at or past --warmup (a share of the steps, default 0.1):
the allocator, the tokenizer's caches and the first checkpoint have settled by then. Growth is
last minus that figure, and "half" the figure at half the steps, so a slow leak shows as growth
in the second half too; soak.json keeps every sample (seconds, step, MB).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

RECIPE = Path("recipes") / "shakespeare_cpu.yaml"  # run from the repository root
MB = 1 << 20


def shakespeare_jsonl(folder: Path, files: int = 8) -> Path:
    """Tiny Shakespeare as `files` JSON Lines files of its paragraphs (one record each)."""
    from bdh_scale.data.sources.names import BUNDLED, BUNDLED_DIR

    text = (BUNDLED_DIR / BUNDLED["tinyshakespeare"]).read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(paragraphs) // files)
    for i in range(files):
        with open(folder / f"part-{i:03d}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": p + "\n\n"}) + "\n" for p in paragraphs[i * per:(i + 1) * per])
    return folder


def overrides(case: str, steps: int, out: Path, extra: list[str]) -> list[str]:
    common = [*extra, f"train.max_steps={steps}", "train.max_time_s=7200", f"train.run_name=soak_{case}",
              f"train.out_dir={out}", "train.sample_tokens=0", "train.resume=null", "tracking.backend=none"]
    if case == "shakespeare":
        return common
    corpus = shakespeare_jsonl(out / "corpus")
    return [*common, f"data.source={corpus}", "data.lanes=stream", "data.workers=2", "train.state=carry",
            "data.val_tokens=20000"]


def last_step(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().splitlines()
        return max((json.loads(x).get("step", 0) for x in lines[1:] if x.strip()), default=0)
    except (OSError, ValueError):
        return 0


def role(p: psutil.Process, trainer: int) -> str:
    if p.pid == trainer:
        return "trainer"
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        cmd = ""
    return "resource_tracker" if "resource_tracker" in cmd else "data worker"


def sample_tree(proc: psutil.Popen, run_dir: Path, every_s: float) -> dict[int, dict]:
    """RSS of `proc` and every process under it, every `every_s` seconds until it exits: per pid its
    role and (seconds, step, bytes) samples."""
    t0, samples = time.monotonic(), {}
    while proc.poll() is None:
        step = last_step(run_dir)
        try:
            tree = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            tree = [proc]
        for p in tree:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            if not rss:  # exited, not yet reaped
                continue
            s = samples.setdefault(p.pid, {"pid": p.pid, "role": role(p, proc.pid), "trace": []})
            s["trace"].append((round(time.monotonic() - t0, 2), step, rss))
        time.sleep(every_s)
    return samples


def soak(case: str, steps: int, out: Path, every_s: float, warmup: float, extra: list[str]) -> dict:
    run_dir = out / f"soak_{case}"
    cmd = [sys.executable, "-m", "bdh_scale.train.cli", str(RECIPE), *overrides(case, steps, out, extra)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    with open(out / f"{case}.log", "w") as log:
        proc = psutil.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        samples = sample_tree(proc, run_dir, every_s)
    warm_step = int(steps * warmup)
    processes = []
    for s in samples.values():
        trace = s.pop("trace")
        warm, half = (next((r for _, st, r in trace if st >= at), trace[-1][2]) for at in (warm_step, steps // 2))
        rss = [r for _, _, r in trace]
        processes.append({**s, "samples": len(trace), "first_mb": rss[0] / MB, "warm_mb": warm / MB,
                          "half_mb": half / MB, "last_mb": rss[-1] / MB, "max_mb": max(rss) / MB,
                          "growth_mb": (rss[-1] - warm) / MB, "second_half_mb": (rss[-1] - half) / MB,
                          "first_step": trace[0][1], "last_step": trace[-1][1],
                          "trace": [(t, st, round(r / MB, 2)) for t, st, r in trace]})  # (s, step, MB)
    return {"case": case, "steps": steps, "returncode": proc.returncode, "wall_s": time.monotonic() - t0,
            "final_step": last_step(run_dir), "warmup_step": warm_step, "processes": processes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--cases", default="shakespeare,stream", help="comma-separated: shakespeare, stream")
    ap.add_argument("--out", type=Path, default=Path("runs") / "soak")
    ap.add_argument("--every-s", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=0.1, help="share of the steps before 'after warm-up'")
    ap.add_argument("override", nargs="*", help="recipe overrides for every case (section.key=value)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [soak(c, args.steps, args.out, args.every_s, args.warmup, args.override) for c in args.cases.split(",")]
    print(f"\n{'case':<12} {'process':<17} {'pid':>7} {'first':>8} {'warm':>8} {'half':>8} {'last':>8} {'max':>8} "
          f"{'growth':>8}  MB RSS (growth: last - warm)")
    for r in results:
        for p in r["processes"]:
            print(f"{r['case']:<12} {p['role']:<17} {p['pid']:>7} {p['first_mb']:>8.1f} {p['warm_mb']:>8.1f} "
                  f"{p['half_mb']:>8.1f} {p['last_mb']:>8.1f} {p['max_mb']:>8.1f} {p['growth_mb']:>+8.1f}")
        print(f"{r['case']:<12} exit {r['returncode']}, {r['final_step']} steps in {r['wall_s']:.0f} s, "
              f"warm-up = step {r['warmup_step']}")
    (args.out / "soak.json").write_text(json.dumps(results, indent=1))
    print(json.dumps([{**r, "processes": [{k: v for k, v in p.items() if k != "trace"} for p in r["processes"]]}
                      for r in results]))  # the samples themselves are in soak.json
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
