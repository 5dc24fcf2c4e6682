"""`bdh-bench --transformers`: ms per generated token through transformers' `generate` (the model
directory loaded with AutoModelForCausalLM, trust_remote_code) against bdh-scale's own generation
(BDH.stream), same weights, same prompt, greedy, at several context lengths.

Both read the prompt once into the carried state and then step one token at a time, so both should
be flat in the context length; what transformers adds is its generation loop around the same step
(input preparation, logits processors, stopping criteria, the cache object). A token's time is the
gap between two consecutive tokens as they come out (a transformers streamer, the items of
BDH.stream); a run reports its median gap. The prompt is read once per context and side, and every
run starts from a copy of that state, so runs are short and many, interleaved across the cases, and
the fastest counts (a shared machine only ever adds time).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bdh_scale.bench.workload import add_model_args, device, model_config
from bdh_scale.errors import UsageError
from bdh_scale.utils.host_memory import keep_freed_host_memory
from bdh_scale.utils.perf import synchronize
from bdh_scale.utils.tree import map_tensors


class Clock:
    """A transformers streamer that notes when each token arrives (the first put is the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, value) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def ms_per_token(times: list[float]) -> float:
    """Median gap between consecutive tokens, ms (the first time is the first new token's): a step
    that another process on the machine delayed does not count."""
    return 1000 * statistics.median(b - a for a, b in zip(times, times[1:]))


def copy_state(state):
    """A copy of a carried state (bdh-scale's BDHState or the shipped one), through its state_dict."""
    return type(state).from_state_dict(map_tensors(torch.clone, state.state_dict()))


def time_transformers(model, prompt: torch.Tensor, cache, tokens: int, device) -> float:
    """generate after `prompt`, from a copy of `cache` (the state after all of it but its last token)."""
    name = sys.modules[type(model).__module__].CACHE_KWARG  # the shipped module's: cache or past_key_values
    clock = Clock(device)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens + 1,
                   min_new_tokens=tokens + 1, do_sample=False, streamer=clock,
                   **{name: type(cache)(copy_state(cache.state))})
    return ms_per_token(clock.times[1:])  # from the first new token on (the first put is the prompt)


def time_bdh(model, prompt: torch.Tensor, state, tokens: int, device) -> float:
    """BDH.stream after `prompt`, from a copy of `state` (after all of it but its last token)."""
    times = []
    for _ in model.stream(prompt[:, -1:], tokens + 1, temperature=0, state=copy_state(state)):
        synchronize(device)
        times.append(time.perf_counter())
    return ms_per_token(times)


@torch.no_grad()
def measure(model_cfg: dict, contexts: list[int], tokens: int, repeats: int, device: torch.device) -> dict:
    """Each context's prompt is read once by each side; every timed run then generates from a copy
    of that state, so the runs are short and many, interleaved across cases."""
    from transformers import AutoModelForCausalLM

    from bdh_scale.model import BDH, ModelConfig

    if device.type == "cpu":
        keep_freed_host_memory()  # as bdh-bench's other BDH cases and the trainer run
    torch.manual_seed(0)
    ours = BDH(ModelConfig(**model_cfg)).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d, tokenizer="bytes")
        theirs = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = {c: torch.randint(0, ours.config.vocab_size, (1, c), generator=gen).to(device) for c in contexts}
    states = {}
    for c, prompt in prompts.items():
        out = theirs(prompt[:, :-1], use_cache=True)
        states["transformers", c] = out.get("cache") or out.get("past_key_values")
        states["bdh_scale", c] = ours(prompt[:, :-1], return_state=True).state
    timers = {"transformers": (time_transformers, theirs), "bdh_scale": (time_bdh, ours)}
    best = {key: float("inf") for key in states}
    cases = list(states)
    for i in range(repeats + 1):  # the first round warms up
        for who, c in cases[i % len(cases):] + cases[:i % len(cases)]:  # each case takes every place in a round
            fn, model = timers[who]
            ms = fn(model, prompts[c], states[who, c], tokens, device)
            best[who, c] = min(best[who, c], ms) if i else best[who, c]
    rows = [{"generation": who, "context": c, "ms_per_token": ms} for (who, c), ms in best.items()]
    lo, hi = min(contexts), max(contexts)
    ratios = {f"{who} ms/token ctx={hi} / ctx={lo}": best[who, hi] / best[who, lo] for who in timers}
    ratios.update({f"transformers / bdh_scale ms/token at ctx={c}": best["transformers", c] / best["bdh_scale", c]
                   for c in contexts})
    return {"rows": rows, "ratios": ratios}


def parse_args(argv):

    p = argparse.ArgumentParser(prog="bdh-bench --transformers", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--ctx", default="256,4096", help="comma-separated context lengths (prompt tokens)")
    p.add_argument("--tokens", type=int, default=32, help="timed generated tokens per measurement")
    p.add_argument("--repeats", type=int, default=10, help="interleaved runs per case; the fastest counts")
    p.add_argument("--out", default="runs/bench", help="directory for the JSON results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    contexts = [int(c) for c in args.ctx.split(",") if c]
    if len(contexts) < 1 or min(contexts) < 1 or args.tokens < 2 or args.repeats < 1:
        print("error: --ctx needs context lengths >= 1, --tokens >= 2, --repeats >= 1", file=sys.stderr)
        return 2
    try:
        import transformers
    except ImportError:
        print("error: bdh-bench --transformers needs transformers: pip install 'transformers>=5.10.1'", file=sys.stderr)
        return 2
    try:
        model_cfg = model_config(args)
    except UsageError as e:  # a bad --recipe or --override: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    if model_cfg.get("arch", "bdh") != "bdh":
        print(f"error: --recipe: model.arch={model_cfg['arch']} has no state to generate from; this compares BDH's "
              "generation", file=sys.stderr)
        return 2
    dev = device()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {dev}, "
          f"{torch.get_num_threads()} threads\nmodel: {model_cfg}\n"
          f"{args.tokens} greedy tokens per run, fastest of {args.repeats}")
    result = measure(model_cfg, contexts, args.tokens, args.repeats, dev)
    print(f"\n{'generation':>13} {'context':>8} {'ms/token':>9}")
    for r in result["rows"]:
        print(f"{r['generation']:>13} {r['context']:>8} {r['ms_per_token']:>9.2f}")
    print("\nratios (same run):")
    for k, v in result["ratios"].items():
        print(f"  {k}: {v:.2f}")
    result.update(model=model_cfg, tokens=args.tokens, repeats=args.repeats, device=str(dev),
                  transformers=transformers.__version__, torch=torch.__version__, python=platform.python_version(),
                  torch_threads=torch.get_num_threads(), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"transformers-generate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")
    print(json.dumps({"ratios": result["ratios"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
