"""Sampling: the next-token rule shared by every model, and the `bdh-generate` command."""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, vocab) -> next tokens (B, 1): temperature, then top-k, then a categorical draw.

    temperature 0 is greedy. The draw happens on the CPU so a seeded CPU generator gives the same
    text on every device.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


def load_run(path: str):
    """(model, tokenizer) from a run directory (runs/<name>) or a save_pretrained directory."""
    from pathlib import Path

    from .data.tokenizer import load_tokenizer
    from .model.pretrained import CONFIG_NAME, load_pretrained
    from .train.rundir import FINAL, TOKENIZER

    root = Path(path)
    weights = root / FINAL if (root / FINAL / CONFIG_NAME).is_file() else root
    if not (weights / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} holds no trained model; give a run directory (runs/<name>, "
                                f"with {FINAL}/) or a save_pretrained directory (with {CONFIG_NAME})")
    tok_dir = root / TOKENIZER if (root / TOKENIZER).exists() else weights / TOKENIZER
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir.exists() else load_tokenizer("bytes")
    return load_pretrained(weights), tokenizer


def trained_window(path: str) -> int | None:
    """The window length a run trained on with train.state=reset (None: carried state, or no run
    config next to the weights): the context its samples should keep to (train.loop.sample_context)."""
    from pathlib import Path

    from .config import load_config
    from .train.diagnostics import sample_context
    from .train.rundir import CONFIG

    config = Path(path) / CONFIG
    return sample_context(load_config(str(config)).train) if config.is_file() else None


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
