"""train.init_from, as the recipe is read: the model fields a recipe leaves out are those of the
model it starts from (its config.json), so that every check of the recipe, the memory check
included, sees the model the run will train. The weights themselves are loaded by
train/init_from.py, which also refuses a source that does not fit."""
from __future__ import annotations

import dataclasses

from bdh_scale.errors import ModelError
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.pretrained import read_config
from bdh_scale.rundir import model_dir

FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


def with_source_model(tree: dict) -> dict:
    """A recipe's mapping with the model fields it leaves out taken from train.init_from's
    config.json. The source is read only when a field is left out (a run's config.yaml names them
    all, so it reads back without the source)."""
    train, model = tree.get("train"), tree.get("model") or {}
    source = train.get("init_from") if isinstance(train, dict) else None
    if not isinstance(source, str) or not source.strip() or not isinstance(model, dict) or set(model) >= FIELDS:
        return tree  # no source, or a malformed section the recipe's own checks will name
    try:
        theirs = read_config(model_dir(source))
    except ModelError as e:
        raise ModelError(f"train.init_from: {e}") from None
    return {**tree, "model": {**dataclasses.asdict(theirs), **model}}
