"""save_pretrained / from_pretrained: a directory with config.json (the recipe's model section,
model/config.py) and model.safetensors, written atomically.

Every model class takes the `Pretrained` mixin. `bdh_scale.model.load_pretrained(directory)`
(registry.py) builds whichever architecture config.json names; `BDH.from_pretrained` and its
siblings build their own class and refuse another's weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from bdh_scale.model.config import BDHConfig
from bdh_scale.utils.atomic import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def write_pretrained(config: BDHConfig, state_dict: dict, directory: str | Path) -> Path:
    """Write config and weights; the directory appears complete or not at all."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(directory, is_dir=True) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def read_config(directory: str | Path, **overrides) -> BDHConfig:
    """The model config saved in `directory`, with `overrides` applied."""
    directory = Path(directory)
    for f in (directory / CONFIG_NAME, directory / WEIGHTS_NAME):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; expected a directory written by save_pretrained "
                                    f"(with {CONFIG_NAME} and {WEIGHTS_NAME})")
    fields = json.loads((directory / CONFIG_NAME).read_text())
    fields.update(overrides)
    return BDHConfig(**fields)


class Pretrained:
    """save_pretrained / from_pretrained for a model built from the recipe's model section.

    A class names its `arch` and may translate the section into its own config (from_config) and
    back (model_config), as the GPT baseline does.
    """

    arch: str = ""

    def model_config(self) -> BDHConfig:
        return self.config

    @classmethod
    def from_config(cls, config: BDHConfig):
        return cls(config)

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_pretrained(self.model_config(), self.state_dict(), directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides):
        config = read_config(directory, **overrides)
        if config.arch != cls.arch:
            raise ValueError(f"{directory} holds a model.arch={config.arch} model, not {cls.arch}; "
                             "load it with bdh_scale.model.load_pretrained")
        model = cls.from_config(config)
        model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_NAME)))
        return model
