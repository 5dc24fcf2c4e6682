"""Run configuration: typed sections loaded from a YAML recipe, with dotted overrides.

    cfg = load_config("recipes/shakespeare_cpu.yaml", ["train.max_steps=200", "model.n_layer=4"])

A recipe has the sections model / data / train / tracking; every key must be a field of its
section's dataclass. A typo is an error naming the key and the closest valid ones; a wrong type
or impossible value is an error naming the field and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.config import DataConfig
from .data.curriculum import validate_schedule
from .model.config import BDHConfig


class ConfigError(ValueError):
    """A recipe or override the trainer cannot run; the message says what would be right."""


@dataclass
class TrainConfig:
    run_name: str = "bdh"  # the run directory is <out_dir>/<run_name>
    out_dir: str = "runs"  # parent of run directories
    seed: int = 1337  # seeds torch, lanes and sampling
    batch_size: int = 8  # B: lanes per process (global batch = processes x B x grad_accum_steps)
    seq_len: int = 256  # T: tokens per lane per step
    seq_len_schedule: list | None = None  # curriculum [[step, T], ...]: from that step on use T
    state: str = "reset"  # reset (windows independent) | carry (TBPTT: state carried, detached)
    max_steps: int = 3000  # optimizer steps
    max_time_s: float | None = None  # stop after this many seconds of training (then eval + save)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    optim: str = "adamw"  # adamw | muon (Muon for encoder/encoder_v/decoder, AdamW for the rest)
    lr: float = 1e-3  # peak learning rate (AdamW)
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decay of matrices (not of gains, gates, biases)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    muon_lr: float = 0.02  # Muon learning rate for the projections
    grad_clip: float = 1.0  # max global gradient norm (0 disables clipping)
    mixed_precision: str = "no"  # no | fp16 (MPS/CUDA, with loss scaling) | bf16 (CUDA/CPU)
    compile: bool = False  # torch.compile the model (fuses its elementwise passes; first steps compile)
    host_memory_reuse: bool = True  # CPU, Linux: keep freed memory for the next step's tensors (host_memory.py)
    gradient_checkpointing: bool = False  # recompute each layer in backward (non-reentrant)
    eval_every: int = 250  # steps between validations (0: only at the end)
    eval_batches: int = 20  # held-out batches per validation
    eval_seq_len: int | None = None  # T of validation windows (default: seq_len)
    log_every: int = 10  # steps between metric lines in metrics.jsonl
    sample_tokens: int = 300  # tokens generated at the end (0: none)
    sample_prompt: str = "\n"  # prompt of the end-of-run sample
    sample_temperature: float = 0.8  # sampling temperature of the end-of-run sample
    sample_top_k: int | None = 40  # top-k of the end-of-run sample (null: full distribution)
    progress: bool = True  # show a progress bar on the main process
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end and on SIGTERM/SIGINT)
    keep_checkpoints: int = 2  # newest checkpoints kept in <run_dir>/checkpoints (0: write none)
    resume: str | None = None  # auto (newest valid checkpoint of <out_dir>/<run_name>) | a checkpoint or run dir | null
    max_bad_steps: int = 5  # consecutive non-finite steps that stop the run (fewer are skipped and counted)

    def validate(self) -> None:
        def bad(f: str, msg: str) -> None:
            raise ValueError(f"train.{f}: {msg}")

        for f in ("batch_size", "seq_len", "max_steps", "grad_accum_steps", "log_every"):
            if getattr(self, f) < 1:
                bad(f, f"must be >= 1, got {getattr(self, f)}")
        for f in ("warmup_steps", "eval_every", "eval_batches", "sample_tokens", "checkpoint_every",
                  "keep_checkpoints"):
            if getattr(self, f) < 0:
                bad(f, f"must be >= 0, got {getattr(self, f)}")
        if self.state not in ("reset", "carry"):
            bad("state", f"'{self.state}' is unknown; use reset or carry")
        if self.optim not in ("adamw", "muon"):
            bad("optim", f"'{self.optim}' is unknown; use adamw or muon")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            bad("mixed_precision", f"'{self.mixed_precision}' is unknown; use no, fp16 or bf16")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            bad("lr", f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.grad_clip < 0:
            bad("grad_clip", f"must be >= 0 (0 disables), got {self.grad_clip}")
        if self.eval_seq_len is not None and self.eval_seq_len < 1:
            bad("eval_seq_len", f"must be >= 1 or null, got {self.eval_seq_len}")
        if self.max_time_s is not None and self.max_time_s <= 0:
            bad("max_time_s", f"must be > 0 or null, got {self.max_time_s}")
        if self.sample_temperature <= 0:
            bad("sample_temperature", f"must be > 0, got {self.sample_temperature}")
        if self.max_bad_steps < 1:
            bad("max_bad_steps", f"must be >= 1 (1: stop at the first non-finite step), got {self.max_bad_steps}")
        if self.resume is not None and not self.resume.strip():
            bad("resume", "empty; use auto, a checkpoint or run directory, or null")
        validate_schedule(self.seq_len_schedule, key="train.seq_len_schedule")


@dataclass
class TrackingConfig:
    backend: str = "none"  # none (metrics.jsonl only) | wandb (also W&B, offline without credentials)
    project: str = "bdh-scale"  # W&B project
    entity: str | None = None  # W&B entity (team or user); null: your default
    wandb_mode: str = "auto"  # auto (online if logged in, else offline) | online | offline | disabled
    diagnostics: bool = True  # at each validation: neuron sparsity and rho norms per layer (act/*, state/*)
    eval_sample_tokens: int = 64  # at each validation: a sample of this many tokens (W&B table; 0: none)
    peak_tflops: float | None = None  # per-device peak for MFU (datasheet); null: measure the matmul peak

    def validate(self) -> None:
        if self.backend not in ("none", "wandb"):
            raise ValueError(f"tracking.backend: '{self.backend}' is unknown; use none or wandb")
        if self.wandb_mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"tracking.wandb_mode: '{self.wandb_mode}' is unknown; "
                             "use auto, online, offline or disabled")
        if self.eval_sample_tokens < 0:
            raise ValueError(f"tracking.eval_sample_tokens: must be >= 0 (0 = no samples), got {self.eval_sample_tokens}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"tracking.peak_tflops: must be > 0 or null (measure), got {self.peak_tflops}")


@dataclass
class RunConfig:
    model: BDHConfig = field(default_factory=BDHConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for section in (self.model, self.data, self.train, self.tracking):
            try:
                section.validate()
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.model.arch in ("gpt", "bdh_hrm") and self.train.state == "carry":
            raise ConfigError(f"train.state: model.arch={self.model.arch} is stateless across windows; "
                              "use train.state=reset")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- loading ------------------------------------------------------------------------------------

def _type_ok(value, hint) -> tuple[bool, object]:
    """Is value acceptable for the annotated type? Returns (ok, value converted where harmless)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, v = _type_ok(value, arm)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                pass
        return False, value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint in (str, bool):
        return isinstance(value, hint), value
    if origin is list or hint is list:
        return isinstance(value, list), value
    return True, value


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of fields, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            section = f"'{where}'" if where else "a recipe"
            raise ConfigError(f"unknown key '{dotted}'{hint} (valid keys of {section}: {', '.join(names)})")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, dotted)
            continue
        ok, converted = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(f"{dotted}: expected {_type_name(hints[key])}, got {value!r}")
        kwargs[key] = converted
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is a value, not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    """'a.b=value' pairs; values are read as YAML (numbers, true/false, null, lists)."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "." not in key:
            raise ConfigError(f"override '{item}': expected section.key=value, e.g. train.max_steps=200")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({e.problem})") from None
        pairs.append((key, value))
    return pairs


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a recipe (None: all defaults), apply dotted overrides, type-check and validate."""
    tree: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe '{path}' not found; pass a YAML file such as recipes/shakespeare_cpu.yaml")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"recipe '{path}' is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe '{path}' must be a mapping with sections model/data/train/tracking")
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    cfg = _build(RunConfig, tree, "")
    cfg.validate()
    return cfg


def config_from_dict(tree: dict) -> RunConfig:
    """Rebuild a RunConfig saved with to_dict() (run directories, checkpoints)."""
    cfg = _build(RunConfig, tree, "")
    cfg.validate()
    return cfg
