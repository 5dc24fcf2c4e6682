"""Checkpoints: everything a run needs to continue exactly where it stopped, written so that a
crash can never leave one that looks valid.

    <run_dir>/checkpoints/step_00001200/
        model.safetensors, optimizer.bin        accelerator.save_state (FSDP: its sharded files)
        scaler.pt                               fp16 only: the GradScaler
        custom_checkpoint_0.pkl                 the LR scheduler (register_for_checkpointing)
        random_states_<rank>.pkl                every rank's python/numpy/torch/CUDA RNG
        rank_<rank>.pt                          every rank's lane positions and carried TBPTT states
        trainer_state.json                      step, tokens, fault counters, lane layout, model shape,
                                                the trackers' ids (the W&B run a resume continues)
        config.yaml, tokenizer/                 the resolved recipe and the tokenizer
        config.json, tokenizer.json             so that the weights load as a model directory
                                                (model/pretrained.py: load_pretrained, bdh-generate)
        manifest.json                           size and sha256 of every file above; written last

Written atomically: every rank writes into one hidden temporary directory (`.step_...tmp`, on the
shared filesystem), the main process writes the manifest last and renames the directory into place.
A crash before the rename leaves only the hidden directory, which is never read; a file damaged
afterwards (truncated copy, bad disk) fails the manifest's sizes or checksums.

train.resume=auto takes the newest checkpoint that passes the manifest, warning about each newer
one it skips; an explicit path must pass or the run is refused. A checkpoint written for another
model shape, tokenizer, optimizer or lane layout (world size x batch_size x grad_accum_steps) is
refused with what differs: its tensors or its lanes would not mean the same thing in this run.
Learning rate, schedule, seq_len, max_steps and the like may change on resume.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate.utils import broadcast_object_list

from bdh_scale.data.tokenizer import load_tokenizer
from bdh_scale.model.pretrained import write_config
from bdh_scale.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from bdh_scale.train.distributed import from_main
from bdh_scale.errors import CheckpointError

CHECKPOINTS = "checkpoints"  # inside the run directory
PREFIX = "step_"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
FORMAT = 1
# Model fields that may change on resume: they do not change what the weights mean.
MODEL_FREE_FIELDS = frozenset({"dropout", "attn_backend", "chunk_size", "hrm_gen_context"})


@dataclass
class Resumed:
    step: int
    tokens: int
    states: list  # one carried state (or None) per micro-batch group of this rank's lanes
    faults: dict  # BadStepGuard.state_dict()


# -- finding and verifying ----------------------------------------------------------------------

def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (hidden temporary ones are not listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def verify(path: str | Path) -> dict:
    """The manifest of a complete, undamaged checkpoint; CheckpointError saying what is wrong otherwise."""
    path = Path(path)
    where = f"checkpoint {path}"
    if not path.is_dir():
        raise CheckpointError(f"{where} not found")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{where} is incomplete: no {MANIFEST} (the write did not finish)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{where} is damaged: {MANIFEST} is not valid JSON") from None
    for rel, want in manifest.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{where} is damaged: {rel} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointError(f"{where} is damaged: {rel} has {size} bytes, the manifest says {want['size']} "
                                  "(truncated or overwritten)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{where} is damaged: {rel} does not match its sha256 in the manifest")
    if TRAINER_STATE not in manifest.get("files", {}):
        raise CheckpointError(f"{where} is damaged: its manifest lists no {TRAINER_STATE}")
    return manifest


def newest_valid(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run that passes verify(); warns about each newer one skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify(path)
            return path
        except CheckpointError as e:
            warnings.warn(f"{e}; skipping it and trying an older one", stacklevel=2)
    return None


def find_resume(resume: str | None, out_dir: str, run_name: str) -> Path | None:
    """The checkpoint train.resume points at: None (start fresh), auto, a checkpoint or a run dir."""
    if resume is None:
        return None
    if resume == "auto":
        return newest_valid(Path(out_dir) / run_name)
    path = Path(resume).expanduser()
    if (path / MANIFEST).exists() or path.name.startswith(PREFIX):
        verify(path)
        return path
    if (path / CHECKPOINTS).is_dir():
        found = newest_valid(path)
        if found is None:
            raise CheckpointError(f"train.resume: no valid checkpoint in {path / CHECKPOINTS}")
        return found
    raise CheckpointError(f"train.resume: {path} is neither a checkpoint (with {MANIFEST}) nor a run directory "
                          f"(with {CHECKPOINTS}/); use auto, such a path, or null")


def resolve_resume(tc, accelerator) -> Path | None:
    """find_resume on the main process (it reads and hashes files), the answer on every rank."""
    found = from_main(accelerator, lambda: find_resume(tc.resume, tc.out_dir, tc.run_name))
    return None if found is None else Path(found)


def checkpoint_step(path: str | Path) -> int:
    return int(json.loads((Path(path) / TRAINER_STATE).read_text())["step"])


def saved_trackers(path: str | Path | None) -> dict:
    """The trackers' state a checkpoint kept (train/tracking.py; {} for none, or an older checkpoint)."""
    return {} if path is None else json.loads((Path(path) / TRAINER_STATE).read_text()).get("trackers", {})


# -- compatibility ------------------------------------------------------------------------------

def lane_layout(world_size: int, tc) -> dict:
    return {"world_size": world_size, "batch_size": tc.batch_size, "grad_accum_steps": tc.grad_accum_steps,
            "state": tc.state}


def check_compatible(path: Path, meta: dict, cfg, world_size: int, tokenizer, has_scaler: bool) -> None:
    """Raise CheckpointError naming every difference that makes the checkpoint unusable here."""
    diffs = []
    theirs_model, ours_model = meta["model"], cfg.to_dict()["model"]
    for key in sorted(set(theirs_model) | set(ours_model)):
        if key not in MODEL_FREE_FIELDS and theirs_model.get(key) != ours_model.get(key):
            diffs.append(f"model.{key}: checkpoint {theirs_model.get(key)!r}, this run {ours_model.get(key)!r}")
    if meta["optim"] != cfg.train.optim:
        diffs.append(f"train.optim: checkpoint {meta['optim']!r}, this run {cfg.train.optim!r}")
    theirs_lanes, ours_lanes = meta["lanes"], lane_layout(world_size, cfg.train)
    for key in ("world_size", "batch_size", "grad_accum_steps", "state"):
        if theirs_lanes[key] != ours_lanes[key]:
            name = "number of processes" if key == "world_size" else f"train.{key}"
            diffs.append(f"{name}: checkpoint {theirs_lanes[key]!r}, this run {ours_lanes[key]!r}")
    if has_scaler and not meta["scaler"]:
        diffs.append("train.mixed_precision: this run uses fp16 loss scaling, the checkpoint has no scaler")
    try:
        saved_tokenizer = load_tokenizer(path / "tokenizer")
    except Exception as e:
        diffs.append(f"tokenizer: the checkpoint's cannot be read ({e})")
    else:
        if not tokenizer.same_as(saved_tokenizer):
            diffs.append(f"tokenizer: checkpoint {getattr(saved_tokenizer, 'name', '?')} "
                         f"(vocab {saved_tokenizer.vocab_size}), this run {getattr(tokenizer, 'name', '?')} "
                         f"(vocab {tokenizer.vocab_size})")
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match this recipe: " + "; ".join(diffs)
                              + ". Resume with the recipe it was written for, or start fresh (train.resume=null)")


# -- writing and reading ------------------------------------------------------------------------

class Checkpointer:
    """Saves and loads the checkpoints of one run directory; every rank must call save/load."""

    def __init__(self, run_dir: Path, accelerator, cfg, tokenizer, inject=None):
        self.root = Path(run_dir) / CHECKPOINTS
        self.accelerator = accelerator
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.inject = inject
        self.every = cfg.train.checkpoint_every
        self.keep = cfg.train.keep_checkpoints
        self.last: Path | None = None  # the newest checkpoint written or loaded by this run
        self.trackers: dict = {}  # kept in trainer_state.json for a resume (train/tracking.py)
        self.last_step = -1

    def due(self, step: int, at_end: bool, in_bad_streak: bool = False) -> bool:
        """Save now? At the end (or on a stop signal) and every `every` steps, never twice for a step;
        periodic saves wait out a streak of non-finite steps so the last good checkpoint survives."""
        if self.keep == 0 or step == self.last_step:
            return False
        return at_end or (self.every > 0 and step % self.every == 0 and not in_bad_streak)

    def save(self, step: int, tokens: int, lanes, states: list, faults: dict) -> Path:
        acc, tc = self.accelerator, self.cfg.train
        final = self.root / f"{PREFIX}{step:08d}"
        writing = atomic_path(final, is_dir=True) if acc.is_main_process else nullcontext(None)
        with writing as tmp:
            box = [str(tmp) if tmp is not None else None]
            if acc.num_processes > 1:
                broadcast_object_list(box, from_process=0)
            tmp = Path(box[0])
            acc.save_state(str(tmp))  # model, optimizer, scaler, scheduler, RNG of every rank
            torch.save({"lanes": lanes.state_dict(),
                        "states": [None if s is None else _to_cpu(s.state_dict()) for s in states]},
                       tmp / f"rank_{acc.process_index:05d}.pt")
            if acc.is_main_process:
                meta = {"format": FORMAT, "step": step, "tokens": tokens, "optim": tc.optim,
                        "lanes": lane_layout(acc.num_processes, tc), "scaler": acc.scaler is not None,
                        "precision": str(acc.mixed_precision), "model": self.cfg.to_dict()["model"],
                        "faults": faults, "trackers": self.trackers}
                write_json_atomic(tmp / TRAINER_STATE, meta)
                write_text_atomic(tmp / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
                self.tokenizer.save(tmp / "tokenizer")
                write_config(tmp, self.cfg.model)  # with tokenizer.json: the weights load as a model directory
                self.tokenizer.save(tmp)
            acc.wait_for_everyone()
            if self.inject is not None:
                self.inject.kill_point("in_checkpoint", step)
            if acc.is_main_process:
                files = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in _files(tmp)}
                write_json_atomic(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": files})
        if acc.is_main_process:
            self._prune()
        acc.wait_for_everyone()
        self.last, self.last_step = final, step
        return final

    def load(self, path: Path, lanes, model) -> Resumed:
        """Restore model, optimizer, scheduler, scaler and RNG (every rank), this rank's lanes and states."""
        acc = self.accelerator
        meta = json.loads((path / TRAINER_STATE).read_text())
        check_compatible(path, meta, self.cfg, acc.num_processes, self.tokenizer, acc.scaler is not None)
        acc.load_state(str(path))
        mine = torch.load(path / f"rank_{acc.process_index:05d}.pt", map_location="cpu", weights_only=True)
        lanes.load_state_dict(mine["lanes"])
        state_cls = None
        states = []
        for d in mine["states"]:
            if d is None:
                states.append(None)
                continue
            state_cls = state_cls or type(model.init_state(1, acc.device))
            states.append(state_cls.from_state_dict(d).to(acc.device))
        self.last, self.last_step = path, int(meta["step"])
        return Resumed(int(meta["step"]), int(meta["tokens"]), states, meta["faults"])

    def _prune(self) -> None:
        """Keep the newest `keep` checkpoints; drop leftovers of interrupted writes."""
        for old in list_checkpoints(self.root.parent)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stray in self.root.glob(f".{PREFIX}*"):
            if stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)


def _to_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


__all__ = ["Checkpointer", "Resumed", "verify", "newest_valid", "find_resume", "resolve_resume",
           "list_checkpoints", "checkpoint_step", "saved_trackers", "check_compatible", "CheckpointError"]
