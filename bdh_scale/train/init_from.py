"""train.init_from: a new run that starts from trained weights: a run's final/, a checkpoint, a run
directory (its final/) or a Hugging Face Hub id, loaded as bdh-generate loads them (rundir.load_run).

It takes the weights only: the run starts at step 0 with a fresh optimizer, fresh lanes and the
recipe's own schedule. The weights must mean here what they meant where they were trained:

  - the model section: the fields a recipe leaves out are the source's (config/source_model.py,
    as the recipe is read); the fields it names must be the source's, except those that do not change
    what the weights mean (checkpoint.MODEL_FREE_FIELDS: dropout, attn_backend, chunk_size, ...);
  - the tokenizer must give the source's ids (the model's tokenizer.json, or its run's tokenizer/).

A source that does not fit is refused in one line naming every difference, before anything is
written. Every rank loads the source itself, before Accelerate wraps the model (setup.py): DDP
starts from equal weights, and FSDP shards each rank's copy of the same weights.

A run that resumes continues its checkpoint's weights: init_from only starts a run, so a requeued
fine-tune job (train.resume=auto) resumes where it stopped once it has a checkpoint. That
checkpoint's run must have started from the same init_from, or a recipe naming another source
would be silently ignored; a resume that names none keeps the run's own, so that config.yaml and
the model card of final/ always say where the weights came from.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from bdh_scale.errors import CheckpointError, ConfigError, ModelError
from bdh_scale.model.config import ModelConfig
from bdh_scale.rundir import CONFIG, load_run, model_dir
from bdh_scale.utils.bounded import read_yaml


def start_weights(cfg, tokenizer, accelerator, resume_from: Path | None) -> dict | None:
    """The state dict a new run starts from (None: the model's own initialization, or a resumed
    checkpoint's weights). On every rank, once the data's tokenizer is known and before the model
    is built and wrapped; nothing is written."""
    tc = cfg.train
    if resume_from is not None:
        keep_lineage(tc, resume_from, accelerator.print)
        return None
    if tc.init_from is None:
        return None
    try:
        model, theirs = load_run(tc.init_from)
    except ModelError as e:
        raise ModelError(f"train.init_from: {e}") from None
    check_source(cfg, model.model_config(), theirs, tokenizer)
    accelerator.print(f"train.init_from: starting from the weights of {tc.init_from} ({model.num_params() / 1e6:.2f}M "
                      "params) at step 0, with a fresh optimizer and the recipe's schedule")
    return model.state_dict()


def differences(ours: ModelConfig, theirs: ModelConfig) -> list[str]:
    """'model.<field>: recipe X, source Y' for every field that changes what the weights mean."""
    from bdh_scale.train.checkpoint.checkpointer import \
        MODEL_FREE_FIELDS  # here: it imports accelerate, not needed to read a recipe

    a, b = dataclasses.asdict(ours), dataclasses.asdict(theirs)
    follows_tokenizer = {"vocab_size"}  # set by the data's tokenizer (setup.make_data), compared as a tokenizer
    return [f"model.{key}: recipe {a[key]!r}, source {b[key]!r}" for key in a
            if key not in MODEL_FREE_FIELDS | follows_tokenizer and a[key] != b[key]]


def check_source(cfg, theirs: ModelConfig, their_tokenizer, tokenizer) -> None:
    """ConfigError naming every difference that would make the source's weights mean something else here."""
    from bdh_scale.train.checkpoint.checkpointer import MODEL_FREE_FIELDS

    diffs, fixes = differences(cfg.model, theirs), []
    if diffs:
        free = ", ".join(sorted(MODEL_FREE_FIELDS))
        fixes.append(f"Leave the model section out to take the source's, or give the source's values: only {free} "
                     "may differ.")
    if not tokenizer.same_as(their_tokenizer):
        diffs.append(f"tokenizer: recipe {tokenizer.name} (vocab {tokenizer.vocab_size}), source "
                     f"{their_tokenizer.name} (vocab {their_tokenizer.vocab_size})")
        fixes.append("Train with the source's tokenizer: data.tokenizer="
                     + ("bytes." if their_tokenizer.name == "bytes" else "its tokenizer.json."))
    if diffs:
        raise ConfigError(f"train.init_from: {cfg.train.init_from} does not fit this recipe: {'; '.join(diffs)}. "
                          + " ".join(fixes))


def keep_lineage(tc, checkpoint: Path, say) -> None:
    """A resumed run keeps the init_from its run started with; a recipe naming another is refused."""
    saved = read_yaml(Path(checkpoint) / CONFIG, error=CheckpointError, what="checkpoint config") or {}
    theirs = (saved.get("train") or {}).get("init_from")
    if tc.init_from is None or same_source(tc.init_from, theirs):
        if tc.init_from is not None:
            say(f"train.init_from: not loaded; the run resumes {checkpoint}, whose weights continue it "
                "(init_from starts a run, a resume goes on from its checkpoint)")
        tc.init_from = theirs
        return
    started = f"train.init_from={theirs}" if theirs else "its own initialization (no train.init_from)"
    raise CheckpointError(f"train.init_from={tc.init_from}: the checkpoint {checkpoint} to resume belongs to a run "
                          f"that started from {started}; resume it with train.init_from={theirs or 'null'}, or start "
                          f"a new run from {tc.init_from} under another train.run_name")


def same_source(a: str, b: str | None) -> bool:
    """The same string, or names of the same model directory (a run directory and its final/)."""
    return b is not None and (a == b or located(a) == located(b))


def located(source: str) -> str:
    """The real path of the model directory `source` names, or `source` itself (a Hub id, a path gone)."""
    try:
        path = Path(model_dir(source)).expanduser()
    except ModelError:
        return source
    return str(path.resolve()) if path.exists() else source
