"""`bdh-generate RUN`: sample text from a trained run (the sampling rule is model/sampling.py)."""
from __future__ import annotations

import argparse
import sys

import torch

from bdh_scale.rundir import load_run, run_config


def trained_window(path: str) -> int | None:
    """The window length a run trained on with train.state=reset (None: carried state, or no run
    config next to the weights): the context its samples should keep to (train/schedule.py)."""
    from bdh_scale.train.schedule import sample_context

    cfg = run_config(path)
    return None if cfg is None else sample_context(cfg.train)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bdh-generate", description="Sample text from a trained run.")
    p.add_argument("run", help="run directory (runs/<name>) or save_pretrained directory")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--tokens", type=int, default=300, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument("--max-context", type=int, default=None,
                   help="predict each token from at most this many earlier ones (BDH: the state is rebuilt "
                        "from the last half when full). Default: the training window of a run trained with "
                        "train.state=reset, else no limit; 0: no limit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.tokens < 0 or args.temperature < 0 or (args.top_k is not None and args.top_k < 1):
        print("error: --tokens and --temperature must be >= 0 and --top-k >= 1", file=sys.stderr)
        return 2
    if args.max_context is not None and args.max_context != 0 and args.max_context < 2:
        print(f"error: --max-context must be 0 (no limit) or >= 2, got {args.max_context}", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_run(args.run)
        max_context = trained_window(args.run) if args.max_context is None else (args.max_context or None)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to(args.device).eval()
    prompt = tokenizer.encode(args.prompt) or [0]
    idx = torch.tensor([prompt], device=args.device)
    gen = torch.Generator().manual_seed(args.seed)
    out = model.generate(idx, args.tokens, temperature=args.temperature, top_k=args.top_k, generator=gen,
                         max_context=max_context)
    print(tokenizer.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
