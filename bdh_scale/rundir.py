"""The run directory runs/<name>/, read and written in one place (the trainer writes it; bdh-generate,
bdh-analyze and the sweeps read it):

    config.yaml      the resolved run config, loadable as a recipe
    tokenizer/       the tokenizer the run used
    metrics.jsonl    one JSON object per logged step
    checkpoints/     train/checkpoint/checkpointer.py
    held_out/        stream lanes: the held-out set, read back on resume (data/lanes/heldout.py)
    final/           save_pretrained: config.json, model.safetensors, tokenizer.json, README.md (the model
                     card), recipe.yaml: a self-contained model directory, ready for the Hub

A run directory has one writer: the main process of the run holds its lock (utils/lock.py,
`.lock`) from before its first write to its exit, and a second run on it is refused naming the
holder. A new run never overwrites an existing directory: it gets the next free suffix
(<name>-1, <name>-2, ...). A resumed run (train.resume) is the same run going on, so it keeps
its directory; which directory a resume writes is decided in train/checkpoint/resume.py. Rows of
metrics.jsonl after the resumed step are dropped: the resumed run logs them again.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from bdh_scale.errors import ConfigError, RunDirBusy
from bdh_scale.utils.atomic import write_text_atomic
from bdh_scale.utils.bounded import read_yaml
from bdh_scale.utils.lock import LOCK_FILE, DirLock, LockHeld, describe_holder

FINAL = "final"  # save_pretrained directory: config.json + model.safetensors
CONFIG = "config.yaml"  # the resolved run config, loadable as a recipe
TOKENIZER = "tokenizer"
METRICS = "metrics.jsonl"  # one JSON object per logged step


# -- claiming and writing ----------------------------------------------------------------------

@dataclass
class Claim:
    """A run directory this process holds the lock of; `made` is the outermost directory this
    process created for it (the run directory, or an out_dir that did not exist), None if none."""

    path: Path
    lock: DirLock
    made: Path | None

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """Give the directory back untouched: a run refused after claiming it leaves no trace."""
        self.release()
        if self.made is not None and vacant(self.path):
            _unmake(self.path, self.made)


def _unmake(path: Path, made: Path) -> None:
    """Remove the vacant run directory and the empty directories above it, up to `made`."""
    shutil.rmtree(path, ignore_errors=True)
    while path != made and path.parent != path:
        path = path.parent
        try:
            path.rmdir()  # only when empty
        except OSError:
            return


def vacant(path: Path) -> bool:
    """Nothing there yet, or nothing but the lock file of a run that wrote nothing."""
    return not path.exists() or (path.is_dir() and all(p.name == LOCK_FILE for p in path.iterdir()))


def check_run_path(path: Path) -> None:
    """A run directory is a directory, or nothing yet: a file, or a link to nothing, at its place is
    refused (ConfigError) rather than written through or around."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"train.run_name: {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                          "remove the link, or give this run another train.run_name")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"train.run_name: {path} is a file, not a run directory; remove it, or give this run "
                          "another train.run_name")


def claim(path: Path) -> Claim:
    """Take the lock of run directory `path` (made if missing); RunDirBusy if another run holds it."""
    check_run_path(path)
    made = None
    for parent in [path, *path.parents]:  # the outermost directory that mkdir will create
        if parent.exists():
            break
        made = parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        lock = DirLock(path).acquire()
    except LockHeld as e:
        if made is not None and vacant(path):
            _unmake(path, made)
        raise RunDirBusy(f"{path} is in use by another run ({describe_holder(e.holder)}); wait for it to end or stop it, "
                         "or give this run another train.run_name") from None
    if lock.unsupported:
        print(f"warning: {lock.unsupported}: this run cannot stop a second run from writing into it", file=sys.stderr)
    return Claim(path, lock, made)


def claim_new(out_dir: str, run_name: str) -> Claim:
    """A fresh directory for a new run: <out_dir>/<run_name>, or the first free <run_name>-<i>."""
    i = 0
    while True:
        path = Path(out_dir) / (run_name if i == 0 else f"{run_name}-{i}")
        i += 1
        check_run_path(path)
        if not vacant(path):
            continue
        try:
            got = claim(path)
        except RunDirBusy:  # another new run took this name a moment ago
            continue
        if vacant(path):  # still empty now that it is ours
            return got
        got.release()


def truncate_metrics(path: Path, after_step: int) -> None:
    """Keep only the rows of metrics.jsonl up to `after_step` (0: none)."""
    if not path.is_file():
        return
    keep = [line for line, row in _rows(path) if row.get("step", 0) <= after_step]
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))


def write_run_dir(run_dir: Path, cfg, tokenizer, resumed_step: int) -> None:
    """Write the run's config and tokenizer, and drop metrics rows the resumed run will log again.
    Called once every check has passed, by the process holding the directory's lock."""
    write_text_atomic(run_dir / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tokenizer.save(run_dir / TOKENIZER)
    truncate_metrics(run_dir / METRICS, resumed_step)


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


def no_weights(root: Path) -> str:
    """Why a run directory has no model to load, and what to pass instead."""
    steps = sorted(root.glob("checkpoints/step_*"))
    newest = f"; its newest checkpoint loads as {steps[-1]}" if steps else ""
    return f"{root} holds no trained model: no {FINAL}/ (the run has not finished){newest}"


def model_dir(source: str | Path) -> str:
    """The model directory or Hub id that `source` names: a run directory's final/, else `source`
    itself (a model directory, a checkpoint or a Hub id). ModelError for a run that has none."""
    from bdh_scale.errors import ModelError
    from bdh_scale.model.pretrained import CONFIG_NAME

    root = Path(source).expanduser()
    if root.is_dir() and not (root / CONFIG_NAME).is_file():  # a run directory
        if not (root / FINAL / CONFIG_NAME).is_file():
            raise ModelError(no_weights(root))
        return str(root / FINAL)
    return str(source)


def load_run(source: str | Path, tokenizer=None):
    """(model, tokenizer) from a run directory (runs/<name>: its final/), a model directory (a run's
    final/, a checkpoint) or a Hugging Face Hub id (model/pretrained.py).

    The tokenizer is the model's own tokenizer.json, else the run's tokenizer/, else `tokenizer`
    (what load_tokenizer takes: "bytes" or a tokenizer.json), which also replaces the model's own.
    Without one the model is refused: its ids would be read as the wrong text. The model's
    `recipe` falls back to the run's config.yaml (runs written before final/ held recipe.yaml)."""
    from bdh_scale.data.tokenize.tokenizer import load_tokenizer
    from bdh_scale.errors import ModelError
    from bdh_scale.model import load_pretrained

    root = Path(source).expanduser()
    model = load_pretrained(model_dir(source))
    if model.recipe is None and (root / CONFIG).is_file():
        model.recipe = read_yaml(root / CONFIG, error=ModelError, what="run config")
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
