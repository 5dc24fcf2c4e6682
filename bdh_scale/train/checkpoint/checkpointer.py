"""Checkpoints: everything a run needs to continue exactly where it stopped, written so that a
crash can never leave one that looks valid, and read without running code from it.

    <run_dir>/checkpoints/step_00001200/
        model.safetensors, optimizer.pt         weights and optimizer moments (checkpoint_files.py);
                                                under FSDP sharded/ (torch distributed checkpoint)
        scaler.json                             fp16 only: the GradScaler
        rank_<rank>.pt                          every rank's lane positions, carried TBPTT states and RNG
        trainer_state.json                      step, tokens, fault counters, lane layout, model shape,
                                                the trackers' ids (the W&B run a resume continues)
        config.yaml, tokenizer/                 the resolved recipe and the tokenizer
        config.json, tokenizer.json             so that the weights load as a model directory
                                                (model/pretrained.py: load_pretrained, bdh-generate;
                                                not under FSDP, whose weights are shards)
        *.py, tokenizer_config.json, ...        and with transformers too (model/hf/export.py)
        manifest.json                           size and sha256 of every file above; written last

Written atomically: every rank writes into one hidden temporary directory (`.step_...tmp`, on the
shared filesystem), the main process writes the manifest last and renames the directory into place.
A crash before the rename leaves only the hidden directory, which is never read; a file damaged
afterwards (truncated copy, bad disk) fails the manifest's sizes or checksums, and a file no
checkpoint holds (a planted pickle) fails it too.

What a resume takes from the checkpoint and what from the recipe: the weights, the optimizer's
moments and step counts, the loss scaler, the RNG, the lanes and carried states and the step
come from the checkpoint; the optimizer's hyperparameters (lr, weight decay, betas, muon_lr),
the LR schedule (lr, min_lr, warmup_steps, max_steps), clipping, evaluation, logging and
checkpointing settings come from the recipe, from the resumed step on. A checkpoint written for
another model shape, tokenizer, optimizer or lane layout (world size x batch_size x
grad_accum_steps) is refused with what differs: its tensors or its lanes would not mean the same
thing in this run.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml
from accelerate.utils import broadcast_object_list

from bdh_scale.data.tokenize.tokenizer import load_tokenizer
from bdh_scale.errors import CheckpointError, Fault
from bdh_scale.model.pretrained import write_model_config
from bdh_scale.train.checkpoint import files
from bdh_scale.train.faults import inject
from bdh_scale.train.optim.build import keep_recipe_hyperparameters
from bdh_scale.utils.atomic import atomic_path, fsync_tree, write_json_atomic, write_text_atomic
from bdh_scale.utils.bounded import read_json
from bdh_scale.utils.disk import describe_write_failure, is_write_failure

CHECKPOINTS = "checkpoints"  # inside the run directory
PREFIX = "step_"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
MAX_MANIFEST_BYTES = 16 << 20  # a line per file: thousands of FSDP shards fit
FORMAT = 2  # 1: Accelerate's save_state, with the scheduler and RNG as pickles (not loadable any more)
# Model fields that may change on resume: they do not change what the weights mean.
MODEL_FREE_FIELDS = frozenset({"dropout", "attn_backend", "chunk_size", "hrm_gen_context"})


@dataclass
class Resumed:
    step: int
    tokens: int
    states: list  # one carried state (or None) per micro-batch group of this rank's lanes
    faults: dict  # BadStepGuard.state_dict()


# -- finding and verifying ----------------------------------------------------------------------

def checkpoint_number(path: Path) -> int:
    """The step in a checkpoint directory's name (step_00001200 -> 1200)."""
    return int(path.name[len(PREFIX):])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (hidden temporary ones are not listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_number)


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
    if not (path / MANIFEST).exists():
        raise CheckpointError(f"{where} is incomplete: no {MANIFEST} (the write did not finish)")
    try:
        manifest = read_json(path / MANIFEST, MAX_MANIFEST_BYTES, CheckpointError, "manifest")
    except CheckpointError as e:
        raise CheckpointError(f"{where} is damaged: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise CheckpointError(f"{where} is damaged: {MANIFEST} is not a checkpoint manifest")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where} has format {manifest.get('format')!r}, this bdh-scale reads format {FORMAT} "
                              "(format 1 kept its scheduler and RNG as pickles, which are never loaded); start fresh "
                              "(train.resume=null) or resume with the version that wrote it")
    listed = manifest.get("files", {})
    present = [str(f.relative_to(path)) for f in _files(path)]
    strangers = files.unexpected_files(set(present) | set(listed))
    if strangers:
        raise CheckpointError(f"{where} holds {', '.join(sorted(strangers))}, which no bdh-scale checkpoint holds "
                              "(tampered, or written by something else): refusing to read it")
    for rel, want in listed.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{where} is damaged: {rel} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointError(f"{where} is damaged: {rel} has {size} bytes, the manifest says {want['size']} "
                                  "(truncated or overwritten)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{where} is damaged: {rel} does not match its sha256 in the manifest")
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise CheckpointError(f"{where} is damaged: {', '.join(unlisted)} not in its manifest")
    if TRAINER_STATE not in listed:
        raise CheckpointError(f"{where} is damaged: its manifest lists no {TRAINER_STATE}")
    return manifest


def newest_valid(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint of a run that passes verify(), why each newer one was skipped)."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify(path)
            return path, skipped
        except CheckpointError as e:
            skipped.append(str(e))
    return None, skipped


def find_checkpoint(resume: str) -> Path:
    """The checkpoint a path in train.resume names: a checkpoint (which must pass verify()) or a run
    directory (its newest valid checkpoint)."""
    path = Path(resume).expanduser()
    if (path / MANIFEST).exists() or path.name.startswith(PREFIX):
        verify(path)
        return path
    if (path / CHECKPOINTS).is_dir():
        found, skipped = newest_valid(path)
        if found is None:
            why = f" (newest: {skipped[0]})" if skipped else ""
            raise CheckpointError(f"train.resume: no valid checkpoint in {path / CHECKPOINTS}{why}")
        return found
    raise CheckpointError(f"train.resume: {path} is neither a checkpoint (with {MANIFEST}) nor a run directory "
                          f"(with {CHECKPOINTS}/); use auto, auto_or_fail, such a path, or null")


def trainer_state(path: str | Path) -> dict:
    """A checkpoint's trainer_state.json (step, tokens, lane layout, model shape, trackers)."""
    state = read_json(Path(path) / TRAINER_STATE, error=CheckpointError, what="trainer state")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is damaged: {TRAINER_STATE} is not an object")
    return state


def checkpoint_step(path: str | Path) -> int:
    return int(trainer_state(path)["step"])


def saved_trackers(path: str | Path | None) -> dict:
    """The trackers' state a checkpoint kept (train/report/tracking.py; {} for none, or an older checkpoint)."""
    return {} if path is None else trainer_state(path).get("trackers", {})


# -- compatibility ------------------------------------------------------------------------------

def lane_layout(world_size: int, tc) -> dict:
    return {"world_size": world_size, "batch_size": tc.batch_size, "grad_accum_steps": tc.grad_accum_steps,
            "state": tc.state}


def global_lanes(layout: dict) -> int:
    return layout["world_size"] * layout["batch_size"] * layout["grad_accum_steps"]


def check_compatible(path: Path, meta: dict, cfg, world_size: int, tokenizer, has_scaler: bool,
                     sharded: bool = False) -> None:
    """Raise CheckpointError naming every difference that makes the checkpoint unusable here."""
    diffs = []
    theirs_model, ours_model = meta["model"], cfg.to_dict()["model"]
    for key in sorted(set(theirs_model) | set(ours_model)):
        if key not in MODEL_FREE_FIELDS and theirs_model.get(key) != ours_model.get(key):
            diffs.append(f"model.{key}: checkpoint {theirs_model.get(key)!r}, this run {ours_model.get(key)!r}")
    if meta["optim"] != cfg.train.optim:
        diffs.append(f"train.optim: checkpoint {meta['optim']!r}, this run {cfg.train.optim!r}")
    theirs_lanes, ours_lanes = meta["lanes"], lane_layout(world_size, cfg.train)
    keys = ["world_size", "batch_size", "grad_accum_steps", "state"]
    if theirs_lanes["world_size"] != world_size and cfg.train.world_size_change == "relay" \
            and global_lanes(theirs_lanes) == global_lanes(ours_lanes):
        keys = ["state"]  # the same lanes dealt to another number of processes (train/checkpoint/resume.py)
    for key in keys:
        if theirs_lanes[key] != ours_lanes[key]:
            name = "number of processes" if key == "world_size" else f"train.{key}"
            diffs.append(f"{name}: checkpoint {theirs_lanes[key]!r}, this run {ours_lanes[key]!r}")
    if meta.get("sharded", False) != sharded:
        kinds = {True: "FSDP (sharded)", False: "unsharded (one process or DDP)"}
        diffs.append(f"distributed type: checkpoint {kinds[meta.get('sharded', False)]}, this run {kinds[sharded]}")
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

    def __init__(self, run_dir: Path, accelerator, cfg, tokenizer):
        self.root = Path(run_dir) / CHECKPOINTS
        self.accelerator = accelerator
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.every = cfg.train.checkpoint_every
        self.keep = cfg.train.keep_checkpoints
        self.last: Path | None = None  # the newest checkpoint written or loaded by this run
        self.trackers: dict = {}  # kept in trainer_state.json for a resume (train/report/tracking.py)
        self.last_step = -1
        self._warned_outside = False

    def due(self, step: int, at_end: bool, in_bad_streak: bool = False) -> bool:
        """Save now? At the end (or on a stop signal) and every `every` steps, never twice for a step;
        periodic saves wait out a streak of non-finite steps so the last good checkpoint survives."""
        if self.keep == 0 or step == self.last_step:
            return False
        return at_end or (self.every > 0 and step % self.every == 0 and not in_bad_streak)

    def save(self, step: int, tokens: int, model, optimizer, lanes, states: list, faults: dict) -> Path:
        try:
            return self._save(step, tokens, model, optimizer, lanes, states, faults)
        except Exception as e:
            if not is_write_failure(e):
                raise
            raise Fault(self._failed(step, e)) from e

    def _failed(self, step: int, e: BaseException) -> str:
        """The one line for a save that failed (a full disk, a quota, a lost mount): what happened,
        that nothing of it is left, and the newest checkpoint to continue from."""
        for stray in self.root.glob(f".{PREFIX}{step:08d}.*"):  # atomic_path removed it; a full disk may not let it
            shutil.rmtree(stray, ignore_errors=True)
        newest = self.last if self.last is not None else newest_valid(self.root.parent)[0]
        then = (f"the newest intact checkpoint is {newest} (step {checkpoint_step(newest)}): make room, then continue "
                "with train.resume=auto" if newest is not None
                else "no checkpoint of this run was saved before it: make room, then start the run again")
        return (f"the checkpoint of step {step} could not be written ({describe_write_failure(e, self.root)}); "
                f"its partial files were removed; {then}")

    def _save(self, step: int, tokens: int, model, optimizer, lanes, states: list, faults: dict) -> Path:
        acc, tc = self.accelerator, self.cfg.train
        final = self.root / f"{PREFIX}{step:08d}"
        writing = atomic_path(final, is_dir=True, durable=True) if acc.is_main_process else nullcontext(None)
        with writing as tmp:
            box = [str(tmp) if tmp is not None else None]
            if acc.num_processes > 1:
                broadcast_object_list(box, from_process=0)
            tmp = Path(box[0])
            files.save_model_and_optimizer(acc, model, optimizer, tmp)
            files.save_rank(tmp, acc.process_index, lanes, states)
            if acc.is_main_process:
                if acc.scaler is not None:
                    files.save_scaler(acc.scaler, tmp)
                meta = {"format": FORMAT, "step": step, "tokens": tokens, "optim": tc.optim,
                        "lanes": lane_layout(acc.num_processes, tc), "scaler": acc.scaler is not None,
                        "precision": str(acc.mixed_precision), "model": self.cfg.to_dict()["model"],
                        "faults": faults, "sharded": files.is_sharded(acc), "trackers": self.trackers}
                write_json_atomic(tmp / TRAINER_STATE, meta)
                write_text_atomic(tmp / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
                self.tokenizer.save(tmp / "tokenizer")
                if not files.is_sharded(acc):  # with tokenizer.json: the weights load as a model directory
                    write_model_config(tmp, self.cfg.model, with_tokenizer=True)
                    self.tokenizer.save(tmp)
            acc.wait_for_everyone()
            inject.at("in_checkpoint", step)
            if acc.is_main_process:
                listed = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in _files(tmp)}
                # On the disk before the manifest says they are complete (a power loss, not only a crash)
                fsync_tree(tmp)
                write_json_atomic(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": listed}, durable=True)
        if acc.is_main_process:
            self._prune()
        acc.wait_for_everyone()
        self.last, self.last_step = final, step
        return final

    def check(self, path: Path) -> dict:
        """The checkpoint's trainer state, once it is known to fit this run (CheckpointError if not)."""
        acc = self.accelerator
        meta = trainer_state(path)
        check_compatible(path, meta, self.cfg, acc.num_processes, self.tokenizer, acc.scaler is not None,
                         files.is_sharded(acc))
        return meta

    def load(self, path: Path, model, optimizer, lanes) -> Resumed:
        """Restore weights, optimizer moments (the recipe's hyperparameters kept), scaler, this rank's
        RNG, lanes and carried states. Reads only; nothing is written."""
        acc = self.accelerator
        meta = self.check(path)
        # Another number of processes: the lanes were dealt anew (train/checkpoint/resume.py). All lanes share
        # one position, so rank 0's file places every rank's; the carried states and RNG streams
        # belonged to ranks of the old layout: states start empty, the RNG keeps this run's seed.
        relaid = meta["lanes"]["world_size"] != acc.num_processes
        # Everything is read before anything is applied: a file that cannot be read
        # (CheckpointUnreadable) leaves the run as it was, free to take an older checkpoint.
        mine = files.load_rank(path, 0 if relaid else acc.process_index)
        saved = None if files.is_sharded(acc) else files.read_model_and_optimizer(path)
        scaler = files.read_scaler(path) if acc.scaler is not None else None
        with keep_recipe_hyperparameters(optimizer):
            files.load_model_and_optimizer(acc, model, optimizer, path, saved)
        if scaler is not None:
            acc.scaler.load_state_dict(scaler)
        lanes.load_state_dict(mine["lanes"])
        states = [None] * self.cfg.train.grad_accum_steps
        if not relaid:
            files.set_rng_state(mine["rng"])
            states = [None if d is None else self._state(d, model) for d in mine["states"]]
        self.last, self.last_step = path, int(meta["step"])
        return Resumed(int(meta["step"]), int(meta["tokens"]), states, meta["faults"])

    def _state(self, d: dict, model):
        """A carried state from its state dict, of the model's own state class, on this device."""
        device = self.accelerator.device
        kind = type(self.accelerator.unwrap_model(model).init_state(1, device))
        return kind.from_state_dict(d).to(device)

    def _prune(self) -> None:
        """Keep the newest `keep` checkpoints; drop leftovers of interrupted writes. Nothing whose
        real path lies outside the run directory is ever deleted (a checkpoints/ link elsewhere)."""
        run_dir = self.root.parent.resolve()
        doomed = list_checkpoints(self.root.parent)[:-self.keep] + [p for p in self.root.glob(f".{PREFIX}*") if p.is_dir()]
        outside = [p for p in doomed if run_dir not in p.resolve().parents]
        for old in doomed:
            if old not in outside:
                shutil.rmtree(old, ignore_errors=True)
        if outside and not self._warned_outside:
            self._warned_outside = True
            print(f"warning: train.keep_checkpoints: {self.root} leads outside {run_dir} ({outside[0].resolve()}); "
                  "old checkpoints there are left in place, not deleted", file=sys.stderr)


__all__ = ["Checkpointer", "Resumed", "verify", "newest_valid", "find_checkpoint", "list_checkpoints",
           "checkpoint_step", "saved_trackers", "check_compatible", "CheckpointError"]
