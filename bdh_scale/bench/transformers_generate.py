"""`bdh-bench --transformers`: ms per generated token through transformers' `generate` (the model
directory loaded with AutoModelForCausalLM, trust_remote_code) against bdh-scale's own generation
(BDH.stream), same weights, same prompt, greedy, at several context lengths.

Both read the prompt once into the carried state and then step one token at a time, so both should
be flat in the context length; what transformers adds is its generation loop around the same step
(input preparation, logits processors, stopping criteria, the cache object). A token's time is the
gap between two consecutive tokens as they come out (a transformers streamer, the items of
BDH.stream), so the prompt's forward is not in it. Each measurement is repeated, interleaved, and
the fastest counts (a shared machine only ever adds time).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from bdh_scale.utils.host_memory import keep_freed_host_memory
from bdh_scale.utils.perf import synchronize


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
    """Mean gap between consecutive tokens, ms (the first time is the first new token's)."""
    return 1000 * (times[-1] - times[0]) / (len(times) - 1)


def time_transformers(model, prompt: torch.Tensor, tokens: int, device) -> float:
    clock = Clock(device)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens + 1,
                   min_new_tokens=tokens + 1, do_sample=False, streamer=clock)
    return ms_per_token(clock.times[1:])  # from the first new token on


def time_bdh(model, prompt: torch.Tensor, tokens: int, device) -> float:
    times = []
    for _ in model.stream(prompt, tokens + 1, temperature=0):
        synchronize(device)
        times.append(time.perf_counter())
    return ms_per_token(times)


def measure(model_cfg: dict, contexts: list[int], tokens: int, repeats: int, device: torch.device) -> dict:
    from transformers import AutoModelForCausalLM

    from bdh_scale.model import BDH, BDHConfig

    if device.type == "cpu":
        keep_freed_host_memory()  # as bdh-bench's other BDH cases and the trainer run
    torch.manual_seed(0)
    ours = BDH(BDHConfig(**model_cfg)).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d, tokenizer="bytes")
        theirs = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = {c: torch.randint(0, ours.config.vocab_size, (1, c), generator=gen).to(device) for c in contexts}
    time_transformers(theirs, prompts[contexts[0]][:, :8], 4, device)  # warm-up of both paths
    time_bdh(ours, prompts[contexts[0]][:, :8], 4, device)
    best = {(who, c): float("inf") for who in ("transformers", "bdh_scale") for c in contexts}
    for _ in range(repeats):
        for c in contexts:
            best["transformers", c] = min(best["transformers", c], time_transformers(theirs, prompts[c], tokens, device))
            best["bdh_scale", c] = min(best["bdh_scale", c], time_bdh(ours, prompts[c], tokens, device))
    rows = [{"generation": who, "context": c, "ms_per_token": ms} for (who, c), ms in best.items()]
    lo, hi = min(contexts), max(contexts)
    ratios = {f"{who} ms/token ctx={hi} / ctx={lo}": best[who, hi] / best[who, lo] for who in ("transformers", "bdh_scale")}
    ratios.update({f"transformers / bdh_scale ms/token at ctx={c}": best["transformers", c] / best["bdh_scale", c]
                   for c in contexts})
    return {"rows": rows, "ratios": ratios}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bdh-bench --transformers", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", help="take the model config from a recipe (default: the seed config)")
    p.add_argument("--override", nargs="*", default=[], help="section.key=value overrides of the recipe")
    p.add_argument("--ctx", default="256,4096", help="comma-separated context lengths (prompt tokens)")
    p.add_argument("--tokens", type=int, default=64, help="timed generated tokens per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per case; the fastest counts")
    p.add_argument("--out", default="runs/bench", help="directory for the JSON results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from bdh_scale.bench.cases import device
    from bdh_scale.bench.cli import model_config

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
    model_cfg = model_config(args)
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
