"""The run directory runs/<name>/, read and written in one place (the trainer writes it; bdh-generate,
bdh-analyze and the sweeps read it):

    config.yaml      the resolved run config, loadable as a recipe
    tokenizer/       the tokenizer the run used
    metrics.jsonl    one JSON object per logged step
    checkpoints/     train/checkpoint.py
    held_out/        stream lanes: the held-out set, read back on resume (data/heldout.py)
    final/           save_pretrained: config.json, model.safetensors, tokenizer.json, README.md (the model
                     card), recipe.yaml: a self-contained model directory, ready for the Hub

A new run never overwrites an existing directory: it gets the next free suffix (<name>-1, <name>-2,
...). A resumed run (train.resume) is the same run going on, so it keeps its directory:
<out_dir>/<run_name> when the checkpoint lives there (a checkpoint from elsewhere starts a fresh
directory, a fork). train.resume=auto with nothing to resume yet also uses <out_dir>/<run_name>
itself, unless a finished run is there, so that a job that is requeued before its first checkpoint
does not scatter directories. Rows of metrics.jsonl after the resumed step are dropped: the
resumed run logs them again.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml

from bdh_scale.utils.atomic import write_text_atomic

FINAL = "final"  # save_pretrained directory: config.json + model.safetensors
CONFIG = "config.yaml"  # the resolved run config, loadable as a recipe
TOKENIZER = "tokenizer"
METRICS = "metrics.jsonl"  # one JSON object per logged step


# -- choosing and writing ---------------------------------------------------------------------

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
    keep = [line for line, row in _rows(path) if row.get("step", 0) <= after_step]
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))


def create_run_dir(cfg, tokenizer, resume_from: Path | None, resumed_step: int) -> Path:
    """Pick the run's directory and write its config and tokenizer (main process only)."""
    run_dir = choose_run_dir(cfg.train, resume_from)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tokenizer.save(run_dir / TOKENIZER)
    truncate_metrics(run_dir / METRICS, resumed_step)
    return run_dir


# -- reading --------------------------------------------------------------------------------------

def _rows(path: Path):
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(row, dict):
            yield line, row


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] when it has none)."""
    path = Path(run_dir) / METRICS
    return [row for _, row in _rows(path)] if path.is_file() else []


def run_config(run_dir: str | Path):
    """The resolved RunConfig a run was trained with, or None when the directory has no config.yaml
    (a bare save_pretrained directory)."""
    from bdh_scale.config import load_config

    path = Path(run_dir) / CONFIG
    return load_config(path) if path.is_file() else None


def recipe_of(model):
    """The RunConfig a loaded model was trained with (its recipe.yaml, or the run's config.yaml),
    or None when it is not known (a model saved without one)."""
    from bdh_scale.config import config_from_dict
    from bdh_scale.errors import ConfigError

    if model.recipe is None:
        return None
    try:
        return config_from_dict(model.recipe)
    except ConfigError as e:  # e.g. a recipe of another bdh-scale version: the model still loads
        warnings.warn(f"the model's recipe cannot be read ({e}); its training window is unknown", stacklevel=2)
        return None


def no_weights(root: Path) -> str:
    """Why a run directory has no model to load, and what to pass instead."""
    steps = sorted(root.glob("checkpoints/step_*"))
    newest = f"; its newest checkpoint loads as {steps[-1]}" if steps else ""
    return f"{root} holds no trained model: no {FINAL}/ (the run has not finished){newest}"


def load_run(source: str | Path, tokenizer=None):
    """(model, tokenizer) from a run directory (runs/<name>: its final/), a model directory (a run's
    final/, a checkpoint) or a Hugging Face Hub id (model/pretrained.py).

    The tokenizer is the model's own tokenizer.json, else the run's tokenizer/, else `tokenizer`
    (what load_tokenizer takes: "bytes" or a tokenizer.json), which also replaces the model's own.
    Without one the model is refused: its ids would be read as the wrong text. The model's
    `recipe` falls back to the run's config.yaml (runs written before final/ held recipe.yaml)."""
    from bdh_scale.data.tokenizer import load_tokenizer
    from bdh_scale.errors import ModelError
    from bdh_scale.model import load_pretrained
    from bdh_scale.model.pretrained import CONFIG_NAME

    root = Path(source).expanduser()
    name = str(source)
    if root.is_dir() and not (root / CONFIG_NAME).is_file():  # a run directory
        if not (root / FINAL / CONFIG_NAME).is_file():
            raise ModelError(no_weights(root))
        name = str(root / FINAL)
    model = load_pretrained(name)
    if model.recipe is None and (root / CONFIG).is_file():
        model.recipe = yaml.safe_load((root / CONFIG).read_text())
    tok = model.tokenizer
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif tok is None and (root / TOKENIZER).is_dir():
        tok = load_tokenizer(root / TOKENIZER)
    if tok is None:
        raise ModelError(f"{source} has no tokenizer.json, so its token ids cannot be read as text; pass the "
                         "tokenizer it was trained with: --tokenizer bytes, or --tokenizer PATH/tokenizer.json")
    if tok.vocab_size != model.model_config().vocab_size:
        raise ModelError(f"the tokenizer {tok.name} has {tok.vocab_size} tokens, the model {source} "
                         f"{model.model_config().vocab_size}; pass the tokenizer it was trained with")
    model.tokenizer = tok
    return model, tok
