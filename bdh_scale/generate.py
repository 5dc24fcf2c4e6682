"""`bdh-generate MODEL`: sample text from a trained model, printed token by token as it is drawn.

MODEL is a run directory (runs/<name>), a model directory (a run's final/, a checkpoint) or a
Hugging Face Hub id (owner/name); the prompt comes from --prompt, --prompt-file or, with
`--prompt-file -`, standard input. The sampling rule is model/sampling.py's.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from bdh_scale.config.recipe import recipe_of
from bdh_scale.data.tokenize.tokenizer import StreamDecoder
from bdh_scale.errors import UsageError
from bdh_scale.rundir import load_run
from bdh_scale.utils.device import check_device

DEFAULT_PROMPT = "\n"


def trained_window(model) -> int | None:
    """The window length a model trained on with train.state=reset (None: carried state, or no
    recipe saved with it): the context its samples should keep to (train/schedule.py)."""
    from bdh_scale.train.schedule import sample_context

    cfg = recipe_of(model)
    return None if cfg is None else sample_context(cfg.train)


def doc_separator(model, tokenizer) -> list[int] | None:
    """The separator's token ids when the model was trained with document resets (the recipe's
    data.doc_reset, as the trainer resolved it): the state is reset after it, as in training."""
    cfg = recipe_of(model)
    return tokenizer.encode(cfg.data.doc_separator) if cfg is not None and cfg.data.doc_reset else None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bdh-generate", description="Sample text from a trained model, printed as it "
                                "is generated.")
    p.add_argument("model", help="run directory (runs/<name>), model directory (final/, a checkpoint) or Hugging "
                                 "Face Hub id (owner/name)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    source.add_argument("--prompt-file", default=None, help="read the prompt from this file; - reads standard input")
    p.add_argument("--tokens", type=int, default=300, help="tokens to generate per sample")
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw; sample i is drawn with seed + i")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample's draw")
    p.add_argument("--max-context", type=int, default=None,
                   help="predict each token from at most this many earlier ones (BDH: the state is rebuilt "
                        "from the last half when full). Default: the training window of a model trained with "
                        "train.state=reset, else no limit; 0: no limit")
    p.add_argument("--tokenizer", default=None, help="for a model saved without its tokenizer: bytes, or the "
                                                     "tokenizer.json it was trained with")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def check_args(args) -> None:
    if not math.isfinite(args.temperature):
        raise UsageError(f"--temperature {args.temperature}: must be a finite number >= 0 (0 = greedy)")
    if args.tokens < 0 or args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or args.num_samples < 1:
        raise UsageError("--tokens and --temperature must be >= 0, --top-k and --num-samples >= 1")
    check_device(args.device)
    if args.max_context is not None and args.max_context != 0 and args.max_context < 2:
        raise UsageError(f"--max-context must be 0 (no limit) or >= 2, got {args.max_context}")


def read_prompt(args) -> str:
    """The prompt from --prompt, --prompt-file (- for standard input) or the default."""
    if args.prompt_file is None:
        text = DEFAULT_PROMPT if args.prompt is None else args.prompt
    elif args.prompt_file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.prompt_file, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--prompt-file: cannot read {args.prompt_file} ({e.strerror})") from None
    if not text:
        raise UsageError("the prompt is empty; give some text with --prompt, --prompt-file or standard input")
    return text


def stream_sample(model, tokenizer, prompt_ids: list[int], args, seed: int, max_context: int | None, out) -> None:
    """Draw one sample and write its text to `out` as the tokens come."""
    idx = torch.tensor([prompt_ids], device=args.device)
    gen = torch.Generator().manual_seed(seed)
    decoder = StreamDecoder(tokenizer, prompt_ids)
    for token in model.stream(idx, args.tokens, temperature=args.temperature, top_k=args.top_k, generator=gen,
                              max_context=max_context, doc_separator=doc_separator(model, tokenizer)):
        piece = decoder.push(token[0].tolist())
        if piece:
            out.write(piece)
            out.flush()
    out.write(decoder.flush() + "\n")
    out.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        prompt = read_prompt(args)
        model, tokenizer = load_run(args.model, tokenizer=args.tokenizer)
        max_context = trained_window(model) if args.max_context is None else (args.max_context or None)
        prompt_ids = tokenizer.encode(prompt)
        if not prompt_ids:
            raise UsageError("the prompt encodes to no tokens; give some text")
    except (UsageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to(args.device).eval()
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"--- sample {i + 1}/{args.num_samples} (seed {args.seed + i}) ---\n")
        out.write(prompt)
        stream_sample(model, tokenizer, prompt_ids, args, args.seed + i, max_context, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
