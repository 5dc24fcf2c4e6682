"""The run directory runs/<name>/: resolved config, tokenizer, metrics.jsonl, final weights.

It is created only once the config, the data and the model have been built, so a bad recipe or
a missing corpus leaves nothing behind. An existing run directory is never overwritten: a new
run with the same name gets the next free suffix (<name>-1, <name>-2, ...).
"""
from __future__ import annotations

from pathlib import Path

import yaml
from accelerate.utils import broadcast_object_list

from ..io import write_text_atomic

FINAL = "final"  # save_pretrained directory: config.json + model.safetensors
CONFIG = "config.yaml"  # the resolved run config, loadable as a recipe
TOKENIZER = "tokenizer"


def free_run_dir(out_dir: str, run_name: str) -> Path:
    base = Path(out_dir) / run_name
    if not base.exists() or not any(base.iterdir()):
        return base
    i = 1
    while (Path(out_dir) / f"{run_name}-{i}").exists():
        i += 1
    return Path(out_dir) / f"{run_name}-{i}"


def prepare_run_dir(cfg, accelerator, tokenizer) -> Path:
    """Pick and create the directory on the main process; every rank gets the same path."""
    chosen = [None]
    if accelerator.is_main_process:
        run_dir = free_run_dir(cfg.train.out_dir, cfg.train.run_name)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        tokenizer.save(run_dir / TOKENIZER)
        chosen = [str(run_dir)]
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def save_final(model, run_dir: Path) -> Path:
    return model.save_pretrained(run_dir / FINAL)
