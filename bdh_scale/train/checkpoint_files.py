"""The files of a checkpoint, written and read without running any code from them.

    model.safetensors          the weights (unwrapped names), safetensors
    optimizer.pt               optimizer.state_dict(): tensors and plain values
    scaler.json                fp16 only: the GradScaler's scale and counters
    rank_<r>.pt                rank r's lanes, carried TBPTT states and RNG states (python, numpy, torch, CUDA)
    trainer_state.json, config.yaml, tokenizer/, manifest.json     (checkpoint.py)

A pickle can run any code when it is loaded, and a checkpoint is a file anyone with write access
to the run directory (or a shared filesystem) can replace; its sha256 manifest detects damage,
not tampering. So nothing here is unpickled: tensors go through safetensors, `.pt` files through
torch.load(weights_only=True), whose unpickler rebuilds tensors, numbers, strings and containers
and refuses every other object; counters and settings are JSON. The LR schedule has no file: it
is a function of the step and the recipe (schedule.py). A file the trainer never writes (a
`custom_checkpoint_0.pkl`, `random_states_0.pkl`, ...) makes the whole checkpoint unusable
(`unexpected_files`, checked with the manifest).
"""
from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bdh_scale.errors import CheckpointError
from bdh_scale.utils.tree import map_tensors

MODEL = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCALER = "scaler.json"
RANK_FILE = re.compile(r"rank_(\d{5})\.pt")
# Every file a checkpoint may hold (paths relative to it); anything else is refused.
EXPECTED = [re.compile(p) for p in (
    r"model\.safetensors", r"optimizer\.pt", r"scaler\.json", RANK_FILE.pattern, r"trainer_state\.json",
    r"config\.yaml", r"manifest\.json", r"tokenizer/[^/]+\.json",
)]


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def unexpected_files(files) -> list[str]:
    """The relative paths among `files` that no checkpoint of this trainer holds."""
    return [f for f in files if not any(p.fullmatch(f) for p in EXPECTED)]


def load_tensors_and_values(path: Path):
    """torch.load with weights_only=True: tensors and plain values, never an arbitrary object."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} holds objects other than tensors and plain "
                              f"values, which a checkpoint never does (tampered or not written by bdh-scale): "
                              f"refusing to load it ({str(e).splitlines()[0]})") from None


# -- model and optimizer ------------------------------------------------------------------------

def save_model_and_optimizer(accelerator, model, optimizer, directory: Path) -> None:
    """Every rank holds the same weights and moments under DDP: the main process writes them."""
    if accelerator.is_main_process:
        weights = {k: v.detach().contiguous().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(weights, str(directory / MODEL), metadata={"format": "pt"})
        torch.save(optimizer.state_dict(), directory / OPTIMIZER)


def load_model_and_optimizer(accelerator, model, optimizer, directory: Path) -> None:
    accelerator.unwrap_model(model).load_state_dict(load_file(str(directory / MODEL)))
    optimizer.load_state_dict(load_tensors_and_values(directory / OPTIMIZER))


# -- loss scaler --------------------------------------------------------------------------------

def save_scaler(scaler, directory: Path) -> None:
    (directory / SCALER).write_text(json.dumps(scaler.state_dict()) + "\n")


def load_scaler(scaler, directory: Path) -> None:
    scaler.load_state_dict(json.loads((directory / SCALER).read_text()))


# -- per rank: lanes, carried states, RNG -------------------------------------------------------

def rng_state() -> dict:
    """This process's random generators, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank(directory: Path, rank: int, lanes, states: list) -> None:
    carried = [None if s is None else map_tensors(lambda t: t.detach().cpu(), s.state_dict()) for s in states]
    torch.save({"lanes": lanes.state_dict(), "states": carried, "rng": rng_state()}, directory / rank_file(rank))


def load_rank(directory: Path, rank: int) -> dict:
    return load_tensors_and_values(directory / rank_file(rank))

