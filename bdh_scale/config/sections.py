"""The train and tracking sections of a recipe, and the whole recipe (RunConfig) with the rules that
tie its sections together. The model and data sections live with their code (model/config.py,
data/config.py); recipe.py reads a YAML file and overrides into a RunConfig."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from bdh_scale.data.config import DataConfig
from bdh_scale.data.kinds import KINDS, kind_of
from bdh_scale.errors import ConfigError
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.registry import ARCHS
from bdh_scale.utils.quote import short
from bdh_scale.utils.schema import Between, NonNegFloat, NonNegInt, PosFloat, PosInt, Range, Section, words

MAX_RUN_NAME = 100  # a run name is a directory name, and runs/<name>-<i> and checkpoints go below it
RUN_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_RUN_NAME}}}")


@dataclass
class TrainConfig(Section):
    section = "train"

    run_name: str = "bdh"  # the run directory is <out_dir>/<run_name>: letters, digits, - _ . (at most 100)
    out_dir: str = "runs"  # parent of run directories
    seed: Annotated[int, Between(0, 2**32 - 1)] = 1337  # seeds torch, lanes and sampling (numpy's range)
    batch_size: PosInt = 8  # B: lanes per process (global batch = processes x B x grad_accum_steps)
    seq_len: PosInt = 256  # T: tokens per lane per step
    seq_len_schedule: list | None = None  # curriculum [[step, T], ...]: from that step on use T
    state: Literal["reset", "carry"] = "reset"  # reset (windows independent) | carry (TBPTT: state carried, detached)
    # windows per lane in one step, backpropagated through the carried state before it is detached
    # (carry only; a step reads bptt_windows x T tokens per lane; docs/design.md)
    bptt_windows: PosInt = 1
    max_steps: PosInt = 3000  # optimizer steps
    max_time_s: PosFloat | None = None  # stop after this many seconds of training (then eval + save)
    grad_accum_steps: PosInt = 1  # micro-batches per optimizer step
    optim: Literal["adamw", "muon"] = "adamw"  # adamw | muon (Muon for encoder/encoder_v/decoder, AdamW for the rest)
    lr: PosFloat = 1e-3  # peak learning rate (AdamW)
    min_lr: float = 1e-4  # learning rate at the end of the decay, in [0, lr]
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # after warmup: cosine to min_lr | wsd (stable, then a linear decay over lr_decay_fraction of max_steps) | constant
    lr_decay_fraction: Annotated[float, Range(0.0, 1.0)] = 0.2  # wsd: the share of max_steps spent decaying
    warmup_steps: NonNegInt = 100  # linear warmup steps
    weight_decay: NonNegFloat = 0.1  # AdamW decay of matrices (not of gains, gates, biases)
    beta1: Annotated[float, Range(0, 1)] = 0.9  # AdamW beta1
    beta2: Annotated[float, Range(0, 1)] = 0.95  # AdamW beta2
    muon_lr: PosFloat = 0.02  # Muon learning rate for the projections
    grad_clip: float = 1.0  # max global gradient norm (0 disables clipping)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # no | fp16 (MPS/CUDA, with loss scaling) | bf16 (CUDA/CPU)
    compile: bool = False  # torch.compile the model (fuses its elementwise passes; first steps compile)
    host_memory_reuse: bool = True  # CPU, Linux: keep freed memory for the next step's tensors (utils/host_memory.py)
    gradient_checkpointing: bool = False  # recompute each layer in backward (non-reentrant)
    # refuse, before anything is allocated or written, a run whose step is estimated not to fit in
    # the device's memory (train/checks/memory.py); false: try anyway
    memory_check: bool = True
    profile_steps: NonNegInt = 0  # steps traced by the torch profiler into <run_dir>/profile (0: none; train/report/profiling.py)
    profile_from: NonNegInt = 10  # this step warms the profiler up; the profile_steps after it are traced
    eval_every: NonNegInt = 250  # steps between validations (0: only at the end)
    eval_batches: NonNegInt = 20  # held-out batches per validation (0: no validation)
    eval_seq_len: PosInt | None = None  # T of validation windows (default: seq_len)
    log_every: PosInt = 10  # steps between metric lines in metrics.jsonl
    sample_tokens: NonNegInt = 300  # tokens generated at the end (0: none)
    sample_prompt: str = "\n"  # prompt of the end-of-run sample
    sample_temperature: PosFloat = 0.8  # sampling temperature of the end-of-run sample
    sample_top_k: PosInt | None = 40  # top-k of the end-of-run sample (null: full distribution)
    progress: bool = True  # a progress bar on a terminal; elsewhere (a log file) a plain line every log_every steps (false: plain lines always)
    checkpoint_every: NonNegInt = 500  # steps between checkpoints (0: only at the end and on SIGTERM/SIGINT)
    keep_checkpoints: NonNegInt = 2  # newest checkpoints kept in <run_dir>/checkpoints (0: write none)
    resume: str | None = None  # auto | auto_or_fail | a checkpoint or run dir | null (train/checkpoint/resume.py)
    # resume on another number of processes: relay (the same global batch, lanes dealt anew, carried states
    # reset) | refuse (train/checkpoint/resume.py)
    world_size_change: Literal["relay", "refuse"] = "relay"
    max_bad_steps: PosInt = 5  # consecutive non-finite steps that stop the run (1: stop at the first)
    # seconds a collective (all-reduce, barrier) waits for the other processes before it fails: the
    # process group's timeout, so a rank that died or hangs stops the others with one line
    collective_timeout_s: PosFloat = 600.0
    push_to_hub: str | None = None  # Hub repo id (owner/name): final/ is uploaded there at the end (needs HF_TOKEN or `hf auth login`)
    # a new run starts from these weights (step 0, fresh optimizer): a run's final/, a checkpoint, a run
    # directory or a Hub id; the model fields the recipe leaves out are the source's (train/init_from.py)
    init_from: str | None = None

    def check(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            self.bad("lr", f"need 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.grad_clip < 0:
            self.bad("grad_clip", f"must be >= 0 (0 disables), got {self.grad_clip}")
        if self.resume is not None and not self.resume.strip():
            self.bad("resume", "empty; use auto, auto_or_fail, a checkpoint or run directory, or null")
        name = self.run_name
        if not RUN_NAME.fullmatch(name) or name in (".", ".."):
            self.bad("run_name", f"{short(name)} is not a plain directory name; use letters, digits, '-', '_' or '.', "
                                 f"at most {MAX_RUN_NAME} characters (the run directory is <out_dir>/<run_name>: put "
                                 "paths in train.out_dir)")
        if self.push_to_hub is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.push_to_hub)
            except HFValidationError:
                self.bad("push_to_hub", f"{short(self.push_to_hub)} is not a Hub repo id; use owner/name, or null")
        if self.init_from is not None and not self.init_from.strip():
            self.bad("init_from", "empty; use a run directory, its final/, a checkpoint, a Hub id (owner/name), or null")
        if self.init_from is not None and self.resume not in (None, "auto", "auto_or_fail"):
            self.bad("init_from", f"given with train.resume={short(self.resume)}: both name the weights to start from; "
                                  "give one (with train.resume=auto a new run starts from init_from, a requeued one "
                                  "resumes)")
        if self.bptt_windows > 1 and self.state != "carry":
            self.bad("bptt_windows", f"{self.bptt_windows} windows are backpropagated through the carried state, and "
                                     "train.state=reset carries none; set train.state=carry or train.bptt_windows=1")
        self.check_schedule()

    def lengths(self) -> list[int]:
        """The distinct training window lengths: train.seq_len, or those of the curriculum."""
        return sorted({T for _, T in self.seq_len_schedule} if self.seq_len_schedule else {self.seq_len})

    def longest_T(self) -> int:
        """The longest window of the run: training (any curriculum step) or validation."""
        return max([self.seq_len, self.eval_seq_len or 0] + [T for _, T in self.seq_len_schedule or []])

    def check_schedule(self) -> None:
        """seq_len_schedule is None or [[0, T0], [s1, T1], ...]: steps strictly increasing from 0,
        every T a positive integer (train/schedule.py reads it)."""
        schedule, key = self.seq_len_schedule, "seq_len_schedule"
        if schedule is None:
            return
        if not schedule:
            self.bad(key, "an empty list; use e.g. [[0, 64], [200, 128]] or null (must be non-empty)")
        prev = None
        for i, entry in enumerate(schedule):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)):
                self.bad(f"{key}[{i}]", f"{short(entry)} is not a [step, T] pair of integers; use e.g. [200, 128]")
            step, T = entry
            if i == 0 and step != 0:
                self.bad(f"{key}[0]", f"starts at step {step}; the first entry must be [0, T]")
            if prev is not None and step <= prev:
                self.bad(f"{key}[{i}]", f"step {step} is not after step {prev}; steps must strictly increase")
            if T < 1:
                self.bad(f"{key}[{i}]", f"T = {T} is not >= 1; use a positive window length")
            prev = step


@dataclass
class TrackingConfig(Section):
    section = "tracking"

    backend: str | list = "none"  # none (metrics.jsonl only) | a tracker Accelerate supports (wandb: offline without credentials; tensorboard, mlflow, aim, comet_ml, clearml, dvclive, swanlab, trackio) | a list of them
    project: str = "bdh-scale"  # W&B project
    entity: str | None = None  # W&B entity (team or user); null: your default
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in, else offline
    diagnostics: bool = True  # at each validation: neuron sparsity and rho norms per layer (act/*, state/*)
    eval_sample_tokens: NonNegInt = 64  # at each validation: a sample of this many tokens (W&B table; 0: none)
    peak_tflops: PosFloat | None = None  # per-device peak for MFU (datasheet); null: measure the matmul peak

    @property
    def trackers(self) -> list[str]:
        """The trackers backend names ([] for none)."""
        names = [self.backend] if isinstance(self.backend, str) else list(self.backend)
        return [n for n in names if n != "none"]

    def check(self) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # every tracker Accelerate supports

        names = [self.backend] if isinstance(self.backend, str) else list(self.backend)
        known = sorted(LOGGER_TYPE_TO_CLASS)
        for name in names:
            if name != "none" and name not in known:
                self.bad("backend", f"unknown tracker {short(name)}; use none, one of {words(known)}, or a list of them")
        if not names or ("none" in names and len(names) > 1) or len(set(names)) != len(names):
            self.bad("backend", f"{short(self.backend)}: give none, or trackers each named once, e.g. [wandb, tensorboard]")


@dataclass
class RunConfig(Section):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> None:
        self.check_sources()
        arch = ARCHS[self.model.arch]
        if self.train.state == "carry" and not arch.stateful:
            stateful = words([name for name, a in ARCHS.items() if a.stateful])
            raise ConfigError(f"train.state: model.arch={self.model.arch} is stateless across windows; use "
                              f"train.state=reset (or model.arch={stateful} to carry the state)")
        if self.model.arch == "gpt" and self.train.longest_T() > self.model.block_size:
            raise ConfigError(f"model.block_size: {self.model.block_size} positions, but the run reads windows of "
                              f"{self.train.longest_T()} tokens (train.seq_len, seq_len_schedule, eval_seq_len); "
                              "raise model.block_size or shorten the windows")

    def check_sources(self) -> None:
        """What each source of the run asks of the rest of the recipe (data/kinds.py): whether it
        has answers to score, its rules against the train section, and whether it can be mixed."""
        if self.data.sources is not None:
            for i, entry in enumerate(self.data.sources):
                kind = kind_of(entry["source"])
                if kind.build is not None or kind.marks_answers:
                    raise ConfigError(f"data.sources[{i}].source: {entry['source']} generates episodes with their own "
                                      "layout and validation, and is not mixed; train on it alone with data.source")
            if self.data.score == "answers":
                raise ConfigError("data.score: 'answers' scores the answers a synthetic source marks, and a mixture "
                                  "(data.sources) marks none; use data.score=all")
            return
        kind = kind_of(self.data.source)
        if self.data.score == "answers" and not kind.marks_answers:
            answering = " or ".join(k.name for k in KINDS if k.marks_answers)
            raise ConfigError(f"data.score: 'answers' scores the answers a synthetic source marks, and "
                              f"'{self.data.source}' ({kind.what}) marks none; use data.score=all, or "
                              f"data.source={answering}")
        if kind.check is not None:
            kind.check(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


