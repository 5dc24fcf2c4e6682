"""`bdh-eval MODEL --tasks wikitext,lambada_openai`: lm-evaluation-harness tasks on a bdh-scale model
(a run directory, its final/, a checkpoint or a Hub id). Needs the eval extra:
pip install 'bdh-scale[eval]'.

A model reads long text the way it was trained (lm.py): through its carried state when trained
with train.state=carry, else in windows of its training length; --context and --window change it.
Tasks come from the harness, or from --include-path: a directory of task YAML files, whose data may
be local files (dataset_path: json, dataset_kwargs.data_files), so evaluation also runs offline.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from bdh_scale.config.recipe import recipe_of
from bdh_scale.errors import UsageError
from bdh_scale.model.registry import is_stateful
from bdh_scale.rundir import load_run
from bdh_scale.utils.atomic import write_text_atomic
from bdh_scale.utils.device import check_device

INSTALL = "pip install 'bdh-scale[eval]'"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bdh-eval", description="Evaluate a model on lm-evaluation-harness tasks.")
    p.add_argument("model", help="run directory (runs/<name>), model directory (final/, a checkpoint) or Hugging "
                                 "Face Hub id (owner/name)")
    p.add_argument("--tasks", required=True, help="comma-separated task names, e.g. wikitext,lambada_openai")
    p.add_argument("--include-path", action="append", default=None,
                   help="a directory of task YAML files (repeatable); their data may be local files")
    p.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (default: the task's)")
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction of them if < 1)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences scored together")
    p.add_argument("--context", choices=["carry", "window"], default=None,
                   help="carry: read whole texts through the carried state (BDH); window: one training window at "
                        "a time. Default: carry for a model trained with train.state=carry, else window")
    p.add_argument("--window", type=int, default=None, help="tokens per window or chunk (default: the training "
                                                            "window, from the model's recipe)")
    p.add_argument("--prefix", default="\n", help="text a document starts after (the models have no BOS/EOS)")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="resamples for the standard errors (0: none)")
    p.add_argument("--output", default=None, help="also write the results as JSON to this file")
    p.add_argument("--tokenizer", default=None, help="for a model saved without its tokenizer: bytes, or the "
                                                     "tokenizer.json it was trained with")
    p.add_argument("--seed", type=int, default=1234, help="seed of few-shot sampling and of sampled generation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def reading(model, args) -> tuple[int, bool]:
    """(window, carry): how the model reads long text, from the flags or its recipe."""
    from bdh_scale.train.schedule import seq_len_at

    cfg = recipe_of(model)
    stateful = is_stateful(model)
    if args.context == "carry" and not stateful:
        raise UsageError(f"--context carry: model.arch={model.arch} has no state to carry; use --context window")
    carry = args.context == "carry" if args.context else stateful and (cfg is None or cfg.train.state == "carry")
    window = args.window
    if window is None and cfg is not None:
        window = seq_len_at(cfg.train.max_steps, cfg.train.seq_len_schedule, cfg.train.seq_len)
    if window is None:
        raise UsageError(f"{args.model} has no recipe.yaml to tell its training window; pass --window T")
    if model.arch == "gpt":
        window = min(window, model.config.block_size)  # its position embeddings end there
    return window, carry


def task_manager(names: list[str], include_path):
    """The harness's task index: only --include-path when it has every task (indexing the thousands of
    built-in tasks takes seconds), else the built-in tasks too. UsageError for a task nowhere."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or set(names) - set(manager.all_tasks):
        manager = TaskManager(include_path=include_path)
    unknown = sorted(set(names) - set(manager.all_tasks))
    if unknown:
        raise UsageError(f"--tasks: unknown task {', '.join(unknown)}; see `lm_eval ls tasks`, or give "
                         "--include-path DIR with its YAML")
    return manager


def check_args(args) -> list[str]:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise UsageError("--tasks: give at least one task name, e.g. --tasks wikitext")
    if args.batch_size < 1 or (args.window is not None and args.window < 1) or args.bootstrap_iters < 0:
        raise UsageError("--batch-size and --window must be >= 1, --bootstrap-iters >= 0")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be > 0, got {args.limit}")
    return names


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        names = check_args(args)
        check_device(args.device)
        try:
            from lm_eval import simple_evaluate
            from lm_eval.utils import make_table

            from bdh_scale.harness.lm import BDHLM
        except ImportError:
            raise UsageError(f"bdh-eval needs lm-evaluation-harness; install it with {INSTALL}") from None
        model, tokenizer = load_run(args.model, tokenizer=args.tokenizer)
        window, carry = reading(model, args)
        manager = task_manager(names, args.include_path)
        lm = BDHLM(model, tokenizer, window=window, carry=carry, batch_size=args.batch_size, device=args.device,
                   prefix=args.prefix, seed=args.seed)
    except (UsageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: {model.arch}, reading text {'through the carried state' if carry else 'in windows'} "
          f"of {window} tokens", file=sys.stderr)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        results = simple_evaluate(model=lm, tasks=names, num_fewshot=args.num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=False, bootstrap_iters=args.bootstrap_iters,
                                  random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                  fewshot_random_seed=args.seed)
    except (ConnectionError, FileNotFoundError) as e:  # a task's data set: not reachable, not cached
        print(f"error: --tasks: the data of a task could not be loaded ({str(e).splitlines()[0]}); offline, give "
              "--include-path DIR with task YAML over local data files", file=sys.stderr)
        return 2
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output:
        write_text_atomic(args.output, json.dumps(dict(results), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
