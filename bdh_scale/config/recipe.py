"""Reading a recipe: typed sections loaded from a YAML recipe, with dotted overrides.

    cfg = load_config("recipes/shakespeare_cpu.yaml", ["train.max_steps=200", "model.n_layer=4"])

A recipe has the sections model / data / train / tracking; every key must be a field of its
section's dataclass (model/config.py, data/config.py, sections.py). A typo is an
error naming the key and the closest valid ones. Types, allowed words and bounds are the fields'
annotations, checked once when a section is built (utils/schema.py); rules that tie fields or
sections together are each section's check(). Every failure is one ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from pathlib import Path

import yaml

from bdh_scale import rundir
from bdh_scale.config.sections import RunConfig
from bdh_scale.config.source_model import with_source_model
from bdh_scale.errors import ConfigError
from bdh_scale.utils.bounded import load_yaml, read_text
from bdh_scale.utils.quote import short

# -- loading ------------------------------------------------------------------------------------

def _build(cls, values, where: str):
    """The dataclass `cls` from a mapping: unknown keys refused with the closest valid ones; each
    section checks its own values as it is built."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of fields, got {type(values).__name__} "
                          f"{short(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        label = key if isinstance(key, str) and len(key) <= 60 else short(key)
        dotted = f"{where}.{label}" if where else str(label)
        if key not in names:
            close = difflib.get_close_matches(str(label), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            section = f"'{where}'" if where else "a recipe"
            raise ConfigError(f"unknown key '{dotted}'{hint} (valid keys of {section}: {', '.join(names)})")
        kwargs[key] = _build(hints[key], value, dotted) if dataclasses.is_dataclass(hints[key]) else value
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is a value, not a section")
    node[leaf] = value


MAX_OVERRIDE_CHARS = 1 << 16  # a command line's section.key=value; longer values belong in a recipe


def parse_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    """'a.b=value' pairs; values are read as YAML (numbers, true/false, null, lists), bounded as a
    recipe is (utils/bounded.py)."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "." not in key:
            raise ConfigError(f"override {short(item)}: expected section.key=value, e.g. train.max_steps=200")
        if len(item) > MAX_OVERRIDE_CHARS:
            raise ConfigError(f"override {short(item)}: {len(item):,} characters, more than the "
                              f"{MAX_OVERRIDE_CHARS:,} an override may have; put long values in the recipe")
        try:
            value = load_yaml(raw, f"override {short(key)}") if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {short(item)}: value is not valid YAML ({getattr(e, 'problem', e)})") from None
        pairs.append((key, value))
    return pairs


def read_recipe(path: str | Path) -> dict:
    """The mapping a YAML recipe holds; ConfigError if it is missing, too big, not a mapping, or
    nests aliases past the bound of utils/bounded.py."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe '{path}' not found; pass a YAML file such as recipes/shakespeare_cpu.yaml")
    text = read_text(path, what="recipe")
    try:
        tree = load_yaml(text, f"recipe '{path}'")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe '{path}' is not valid YAML{at}: {getattr(e, 'problem', None) or short(str(e))}") from None
    if tree is None or tree == {}:
        raise ConfigError(f"recipe '{path}' is empty; a recipe names at least its model, data and train settings "
                          "(start from recipes/shakespeare_cpu.yaml)")
    if not isinstance(tree, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping with sections model/data/train/tracking")
    return tree


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a recipe (None: all defaults), apply dotted overrides; the result is checked."""
    tree = read_recipe(recipe) if recipe is not None else {}
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    tree = with_source_model(tree)  # train.init_from: the model fields the recipe leaves out are the source's
    if recipe is not None and not tree.get("model"):  # the defaults are a 151M-parameter model: never by accident
        raise ConfigError(f"recipe '{recipe}' has no model section, so it would build the 151M-parameter default "
                          "model; name the model's size (n_layer, n_embd, n_head, ...) as recipes/shakespeare_cpu.yaml "
                          "does, or with model.* overrides")
    return config_from_dict(tree)


def config_from_dict(tree: dict) -> RunConfig:
    """The RunConfig of a recipe's mapping (RunConfig.to_dict() read back, e.g. a model's recipe.yaml)."""
    return _build(RunConfig, tree, "")


# -- the config a run or a model was trained with ------------------------------------------------

def run_config(run_dir: str | Path):
    """The resolved RunConfig a run was trained with, or None when the directory has no config.yaml
    (a bare save_pretrained directory)."""
    path = Path(run_dir) / rundir.CONFIG
    return load_config(path) if path.is_file() else None


def recipe_of(model):
    """The RunConfig a loaded model was trained with (its recipe.yaml, or the run's config.yaml),
    or None when it is not known (a model saved without one)."""
    if model.recipe is None:
        return None
    try:
        return config_from_dict(model.recipe)
    except ConfigError as e:  # e.g. a recipe of another bdh-scale version: the model still loads
        warnings.warn(f"the model's recipe cannot be read ({e}); its training window is unknown", stacklevel=2)
        return None
