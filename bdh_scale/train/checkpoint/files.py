"""The files of a checkpoint, written and read without running any code from them.

    model.safetensors          the weights (unwrapped names), safetensors
    optimizer.pt               optimizer.state_dict(): tensors and plain values
    sharded/                   under FSDP instead of the two above: torch.distributed.checkpoint files,
                               every rank writing its shards (__<rank>_0.distcp) and rank 0 the index
                               (.metadata); loading reshards to any number of processes
    scaler.json                fp16 only: the GradScaler's scale and counters
    rank_<r>.pt                rank r's lanes, carried TBPTT states and RNG states (python, numpy, torch, CUDA)
    trainer_state.json, config.yaml, tokenizer/, config.json, tokenizer.json, manifest.json   (checkpoint.py)
    *.py, tokenizer_config.json, generation_config.json   the model for transformers (model/hf/export.py)

A pickle can run any code when it is loaded, and a checkpoint is a file anyone with write access
to the run directory (or a shared filesystem) can replace; its sha256 manifest detects damage,
not tampering. So nothing here is unpickled: tensors go through safetensors, `.pt` files through
torch.load(weights_only=True), whose unpickler rebuilds tensors, numbers, strings and containers
and refuses every other object; counters and settings are JSON. torch.distributed.checkpoint
pickles its index and plain values and reads them back with plain pickle: here the index goes
through an unpickler that builds only the index's own classes, and values through
torch.load(weights_only=True) (SafeReader, SafeLoadPlanner). The LR schedule has no file: it
is a function of the step and the recipe (schedule.py). A file the trainer never writes (a
`custom_checkpoint_0.pkl`, `random_states_0.pkl`, ...) makes the whole checkpoint unusable
(`unexpected_files`, checked with the manifest).
"""
from __future__ import annotations

import json
import pickle
import random
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from bdh_scale.errors import CheckpointError, CheckpointUnreadable
from bdh_scale.utils.bounded import read_json
from bdh_scale.utils.quote import short
from bdh_scale.utils.tree import map_tensors

MODEL = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCALER = "scaler.json"
SHARDED = "sharded"
RANK_FILE = re.compile(r"rank_(\d{5})\.pt")
# Every file a checkpoint may hold (paths relative to it); anything else is refused.
EXPECTED = [re.compile(p) for p in (
    r"model\.safetensors", r"optimizer\.pt", r"scaler\.json", RANK_FILE.pattern, r"trainer_state\.json",
    r"config\.yaml", r"manifest\.json", r"tokenizer/[^/]+\.json", r"config\.json", r"tokenizer\.json",
    r"sharded/\.metadata", r"sharded/__\d+_\d+\.distcp",
    r"[a-z_]+\.py", r"tokenizer_config\.json", r"generation_config\.json",  # transformers' files (model/hf/)
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
                              f"refusing to load it ({refusal(e)})") from None


def refusal(e: Exception) -> str:
    """The line of a weights_only refusal that names the object refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(e).__name__)


@contextmanager
def distributed_checkpoint_errors():
    """torch.distributed.checkpoint wraps every rank's failure in a CheckpointException (a
    BaseException): hand on the first one as itself, so a refusal stays one `error:` line."""
    try:
        yield
    except CheckpointException as e:
        first = next(iter(e.failures.values()))
        raise (first[0] if isinstance(first, tuple) else first) from None


# -- model and optimizer ------------------------------------------------------------------------

def is_sharded(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def save_model_and_optimizer(accelerator, model, optimizer, directory: Path) -> None:
    """FSDP: every rank writes its shards. Otherwise every rank holds the same weights and moments
    and the main process writes them."""
    if is_sharded(accelerator):
        model_state, optim_state = get_state_dict(model, _torch_optimizer(optimizer))
        with distributed_checkpoint_errors():
            dcp.save({"model": model_state, "optimizer": optim_state},
                     storage_writer=FileSystemWriter(directory / SHARDED))
    elif accelerator.is_main_process:
        weights = {k: v.detach().contiguous().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(weights, str(directory / MODEL), metadata={"format": "pt"})
        torch.save(optimizer.state_dict(), directory / OPTIMIZER)


def read_model_and_optimizer(directory: Path) -> tuple[dict, dict]:
    """(weights, optimizer state) of an unsharded checkpoint, read but not applied, so that a file
    that cannot be read leaves the model and optimizer as they were (CheckpointUnreadable)."""
    return (readable(directory / MODEL, lambda p: load_file(str(p))),
            readable(directory / OPTIMIZER, load_tensors_and_values))


def readable(path: Path, read):
    """read(path), any failure to read it (truncated, not its format) one CheckpointUnreadable
    naming the file; a refusal of its contents (a pickle of other objects) stays what it is."""
    try:
        return read(path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointUnreadable(f"checkpoint {path.parent}: {path.name} cannot be read "
                                   f"({type(e).__name__}: {short(str(e).strip().splitlines()[0] if str(e).strip() else '')})"
                                   ) from None


def load_model_and_optimizer(accelerator, model, optimizer, directory: Path, saved: tuple | None = None) -> None:
    """Apply a checkpoint's weights and optimizer state: `saved` (read_model_and_optimizer), or read
    now; under FSDP every rank reads and reshards its own part."""
    if is_sharded(accelerator):
        inner = _torch_optimizer(optimizer)
        model_state, optim_state = get_state_dict(model, inner)  # this run's shapes and shards, to fill
        state = {"model": model_state, "optimizer": optim_state}
        with distributed_checkpoint_errors():
            dcp.load(state, storage_reader=SafeReader(directory / SHARDED), planner=SafeLoadPlanner())
        set_state_dict(model, inner, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return
    weights, optim_state = saved if saved is not None else read_model_and_optimizer(directory)
    accelerator.unwrap_model(model).load_state_dict(weights)
    optimizer.load_state_dict(optim_state)


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # under Accelerate's AcceleratedOptimizer


class _IndexUnpickler(pickle.Unpickler):
    """Builds a torch.distributed.checkpoint index (.metadata) and nothing else."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
               ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
               ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}

    def find_class(self, module, name):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in self.ALLOWED or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class SafeReader(FileSystemReader):
    """FileSystemReader whose index is read by _IndexUnpickler (the stock one uses pickle.load)."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _IndexUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint {path.parent.parent}: {SHARDED}/.metadata holds objects a checkpoint "
                                  f"index never does (tampered or not written by bdh-scale): refusing to load it ({e})"
                                  ) from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner reading plain values with weights_only=True (the stock one does not)."""

    def load_bytes(self, read_item, value) -> None:
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"a sharded checkpoint value ({read_item.dest_index.fqn}) holds objects other than "
                                  f"tensors and plain values: refusing to load it ({refusal(e)})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


# -- loss scaler --------------------------------------------------------------------------------

def save_scaler(scaler, directory: Path) -> None:
    (directory / SCALER).write_text(json.dumps(scaler.state_dict()) + "\n")


def read_scaler(directory: Path) -> dict:
    return read_json(directory / SCALER, error=CheckpointUnreadable, what="loss scaler state")


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
    return readable(directory / rank_file(rank), load_tensors_and_values)

