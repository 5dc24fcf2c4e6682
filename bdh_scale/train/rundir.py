"""The run directory runs/<name>/: resolved config, tokenizer, metrics.jsonl, checkpoints/, final weights.

It is created only once the config, the data and the model have been built, so a bad recipe or
a missing corpus leaves nothing behind. A new run never overwrites an existing directory: it gets
the next free suffix (<name>-1, <name>-2, ...).

A resumed run (train.resume) is the same run going on, so it keeps its directory: <out_dir>/<run_name>
when the checkpoint lives there (a checkpoint from elsewhere starts a fresh directory, a fork).
train.resume=auto with nothing to resume yet also uses <out_dir>/<run_name> itself, unless a finished
run is there, so that a job that is requeued before its first checkpoint does not scatter
directories. Rows of metrics.jsonl after the resumed step are dropped: the resumed run logs them again.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from accelerate.utils import DistributedType

from ..io import write_text_atomic
from .checkpoint import checkpoint_step
from .distributed import from_main

FINAL = "final"  # save_pretrained directory: config.json + model.safetensors
CONFIG = "config.yaml"  # the resolved run config, loadable as a recipe
TOKENIZER = "tokenizer"
METRICS = "metrics.jsonl"  # one JSON object per logged step


def free_run_dir(out_dir: str, run_name: str) -> Path:
    base = Path(out_dir) / run_name
    if not base.exists() or not any(base.iterdir()):
        return base
    i = 1
    while (Path(out_dir) / f"{run_name}-{i}").exists():
        i += 1
    return Path(out_dir) / f"{run_name}-{i}"


def choose_run_dir(tc, resume_from: Path | None) -> Path:
    base = Path(tc.out_dir) / tc.run_name
    if resume_from is not None:
        return base if base.resolve() in Path(resume_from).resolve().parents else free_run_dir(tc.out_dir, tc.run_name)
    if tc.resume == "auto" and not (base / FINAL).exists():
        return base
    return free_run_dir(tc.out_dir, tc.run_name)


def truncate_metrics(path: Path, after_step: int) -> None:
    """Keep only the rows of metrics.jsonl up to `after_step` (0: none)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))


def prepare_run_dir(cfg, accelerator, tokenizer, resume_from: Path | None = None) -> Path:
    """Pick and create the directory on the main process; every rank gets the same path."""

    def make() -> str:
        run_dir = choose_run_dir(cfg.train, resume_from)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        tokenizer.save(run_dir / TOKENIZER)
        truncate_metrics(run_dir / METRICS, checkpoint_step(resume_from) if resume_from is not None else 0)
        return str(run_dir)

    return Path(from_main(accelerator, make))


def save_final(accelerator, model, model_config, run_dir: Path):
    """Write <run_dir>/final on the main process; returns the model there (None on other ranks).

    Every rank must call it: under FSDP the full weights are gathered from all ranks first and
    loaded into a fresh, unsharded copy; otherwise the trained model itself is saved.
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        from ..model import build_model

        weights = accelerator.get_state_dict(model)  # collective: every rank takes part
        final = None
        if accelerator.is_main_process:
            final = build_model(model_config)
            final.load_state_dict(weights)
    else:
        final = accelerator.unwrap_model(model) if accelerator.is_main_process else None
    if final is not None:
        final.save_pretrained(run_dir / FINAL)
    accelerator.wait_for_everyone()
    return final
