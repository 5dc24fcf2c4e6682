"""save_pretrained / from_pretrained: a directory with config.json and model.safetensors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..io import atomic_path
from .config import BDHConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model, directory: str | Path) -> Path:
    """Write the model's config and weights; the directory appears complete or not at all."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory, is_dir=True) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def load_pretrained(directory: str | Path, **overrides):
    """Build the model saved in `directory` (BDH or the gpt baseline) and load its weights."""
    from . import build_model

    directory = Path(directory)
    cfg_file, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; expected a directory written by save_pretrained "
                                    f"(with {CONFIG_NAME} and {WEIGHTS_NAME})")
    fields = json.loads(cfg_file.read_text())
    fields.update(overrides)
    model = build_model(BDHConfig(**fields))
    model.load_state_dict(load_file(str(weights)))
    return model
