"""Everything a training run holds (run.py: Run), built as one story, each part once:

    accelerator   processes, device, precision, what the launch asked; will a step fit in memory?
    run directory which directory the run writes and which checkpoint it continues (claimed under its lock)
    data          this rank's lanes and the held-out data
    model         the weights (fresh, train.init_from's, compiled, wrapped for DDP/FSDP) and the optimizer
    resume        the checkpoint's weights, moments, lanes and RNG; then the run directory is written
    reporting     schedule, guard, trackers, the metrics log

`setup(cfg)` returns the Run; loop.py drives it.

Nothing is written before every check has passed: the recipe checked itself when it was built,
preflight.py checks what needs the data and the filesystem, and a resumed checkpoint is read and
checked against the recipe (read only) before the run directory's config, tokenizer and metrics
are written. A refused run leaves its directory as it found it.

Data is not passed through accelerator.prepare: every rank builds its own disjoint lanes
(bdh_scale.data), so the global batch is processes x B lanes x T tokens and nothing is re-split
or duplicated. The carried TBPTT states of a lane live on the rank that owns the lane.
"""
from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration, set_seed

from bdh_scale.config import RunConfig
from bdh_scale.data import DataBundle, build_data
from bdh_scale.errors import CheckpointError, CheckpointUnreadable
from bdh_scale.model import build_model
from bdh_scale.rundir import METRICS, write_run_dir
from bdh_scale.train.checkpoint.checkpointer import (Checkpointer, Resumed, checkpoint_number, list_checkpoints,
                                                     saved_trackers, trainer_state, verify)
from bdh_scale.train.checkpoint.resume import AUTO, plan_start, relay_lanes
from bdh_scale.train.checks.memory import check_memory
from bdh_scale.train.checks.preflight import preflight, writable_ancestor
from bdh_scale.train.compute import check_backend, compile_model, resolve_mixed_precision, tune_attention
from bdh_scale.train.distributed import (check_launch, check_parallel_plan, describe_plan, from_main, fsdp_requested,
                                         shard_cpu_processes, use_cpu_processes)
from bdh_scale.train.faults import inject
from bdh_scale.train.faults.guard import BadStepGuard
from bdh_scale.train.faults.signals import watch_launcher
from bdh_scale.train.final import missing_credentials
from bdh_scale.train.init_from import start_weights
from bdh_scale.train.optim.build import build_optimizer
from bdh_scale.train.report.diagnostics import MFU
from bdh_scale.train.report.tracking import MetricsLog, SampleTable, Trackers, accelerate_log_with
from bdh_scale.train.run import Run
from bdh_scale.train.schedule import make_scheduler
from bdh_scale.utils.host_memory import keep_freed_host_memory


def make_accelerator(cfg: RunConfig) -> tuple[Accelerator, str]:
    """The Accelerator for this recipe on this machine, and the precision in effect."""
    tc = cfg.train
    cpu = use_cpu_processes()  # several processes on a machine without GPUs: gloo on the CPU
    # The process group is made here, by the first PartialState: its timeout bounds every collective,
    # so the survivors of a rank that died (or hangs) fail within train.collective_timeout_s.
    timeout = timedelta(seconds=tc.collective_timeout_s)
    process = PartialState(cpu=cpu, timeout=timeout)
    precision, notice = resolve_mixed_precision(tc.mixed_precision, process.device)
    # Trackers that write files need a logging directory now; the run directory replaces it once chosen.
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, log_with=accelerate_log_with(cfg.tracking),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
                              project_config=ProjectConfiguration(logging_dir=str(Path(tc.out_dir) / tc.run_name)))
    if fsdp_requested():
        shard_cpu_processes(accelerator)  # no-op where Accelerate runs FSDP itself (GPUs)
    accelerator.print(describe_plan(accelerator))
    check_launch(accelerator.num_processes)
    check_parallel_plan(accelerator, tc)
    if notice:
        accelerator.print(notice)
    if tc.host_memory_reuse and accelerator.device.type == "cpu":
        keep_freed_host_memory()  # big tensors would otherwise page-fault in on every step
    return accelerator, precision


def make_data(cfg: RunConfig, accelerator: Accelerator, resume_from: Path | None = None) -> DataBundle:
    """This rank's lanes (the micro-batches of one step are disjoint groups of them) and the
    held-out data (a resumed stream reads its held-out set back from the run it continues); the
    model's vocabulary follows the tokenizer."""
    tc = cfg.train
    longest_T = max([tc.seq_len] + [T for _, T in tc.seq_len_schedule or []])
    data = build_data(cfg.data, batch_size=tc.batch_size * tc.grad_accum_steps, world_size=accelerator.num_processes,
                      rank=accelerator.process_index, seed=tc.seed, seq_len=longest_T,
                      held_out_dir=None if resume_from is None else Path(resume_from).parent.parent,
                      windows_per_step=tc.bptt_windows)
    cfg.data.doc_reset = data.doc_reset  # resolved from the source: config.yaml says what the run did
    if cfg.model.vocab_size != data.tokenizer.vocab_size:
        accelerator.print(f"model.vocab_size set to {data.tokenizer.vocab_size} by the tokenizer {data.tokenizer.name}")
        cfg.model.vocab_size = data.tokenizer.vocab_size
    return data


def make_model_and_optimizer(cfg: RunConfig, accelerator: Accelerator, precision: str, weights: dict | None = None):
    """(prepared model, optimizer): the attention forms chosen, the model compiled in place if asked,
    fused AdamW where it exists. `weights`: the state dict to start from (train.init_from)."""
    tc = cfg.train
    model = build_model(cfg.model)
    if weights is not None:  # on every rank, before DDP or FSDP wrap (and shard) the model
        model.load_state_dict(weights)
    model.gradient_checkpointing = tc.gradient_checkpointing  # non-reentrant: safe under DDP
    tune_attention(model, cfg, accelerator, precision)
    if tc.compile:
        # In place: parameter names, state_dict and checkpoints stay those of the eager model, and
        # DDP/FSDP wrap it as usual. Each new window length compiles once (train/compute.py).
        compile_model(model, tc)
    # Fused AdamW (one kernel for all parameters) exists for CPU and CUDA. Not with fp16: the loss
    # scaler then always calls the fused step (which skips inside), and Accelerate could no longer
    # tell a skipped step (optimizer_step_was_skipped) from a taken one.
    fused = accelerator.device.type in ("cpu", "cuda") and tc.optim == "adamw" and accelerator.scaler is None
    optimizer = build_optimizer(model, name=tc.optim, lr=tc.lr, weight_decay=tc.weight_decay,
                                betas=(tc.beta1, tc.beta2), muon_lr=tc.muon_lr, fused=fused or None)
    if accelerator.distributed_type == DistributedType.FSDP:
        # FSDP2 warns once that the model returns views (the carried state is a lanes-first view of
        # the heads-first tensors, model/bdh/attention/state.py): an in-place op on them would skip its hook.
        # The loop never writes into a model output in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return accelerator.prepare(model, optimizer)


def make_schedule(tc, optimizer, step: int):
    """The LR schedule of the recipe, at optimizer step `step` (not prepared: Accelerate's wrapper
    would step it once per process). A short run (max_steps below warmup_steps) warms up over all
    of its steps."""
    # The schedule follows loop steps, skipped ones included (faults.py): torch's warning about a
    # scheduler step without an optimizer step is expected when the first step is skipped.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    return make_scheduler(optimizer, lr=tc.lr, min_lr=tc.min_lr, warmup_steps=min(tc.warmup_steps, tc.max_steps),
                          max_steps=tc.max_steps, step=step, shape=tc.lr_schedule, decay_fraction=tc.lr_decay_fraction)


def claim_run_dir(cfg: RunConfig, accelerator: Accelerator):
    """(run directory, checkpoint to resume or None, its lane layout or None, the claim on the main
    process / None elsewhere): decided on the main process under the directory's lock
    (train/checkpoint/resume.py), told to every rank."""
    held = {}

    def decide():
        claim, found = plan_start(cfg.train, say=accelerator.print)
        held["claim"] = claim
        layout = None if found is None else trainer_state(found).get("lanes")
        return str(claim.path), None if found is None else str(found), layout

    run_dir, found, layout = from_main(accelerator, decide)
    return Path(run_dir), None if found is None else Path(found), layout, held.get("claim")


def load_readable(checkpoints: Checkpointer, found: Path, tc, model, optimizer, lanes, say) -> tuple[Resumed, Path]:
    """Load `found`; with train.resume=auto, a checkpoint whose files cannot be read (they pass the
    manifest, yet a reader fails on them) is skipped with a warning for the next older intact one,
    as a damaged one is when the run is planned (train/checkpoint/resume.py). (what was loaded, from where)"""
    candidates = [found]
    if tc.resume in AUTO:
        candidates += [p for p in reversed(list_checkpoints(found.parent.parent))
                       if checkpoint_number(p) < checkpoint_number(found)]
    skipped = []
    for path in candidates:
        if path is not found:
            try:
                verify(path)
            except CheckpointError:
                continue
        try:
            resumed = checkpoints.load(path, model, optimizer, lanes)
        except CheckpointUnreadable as e:
            skipped.append(str(e))
            continue
        for why in skipped:
            say(f"warning: {why}; resuming from the older {path.name}")
        return resumed, path
    raise CheckpointError(f"train.resume={tc.resume}: no checkpoint could be read ({skipped[0]}); remove the damaged "
                          "checkpoints, or start afresh with train.resume=null")


def setup(cfg: RunConfig) -> Run:
    """Build the run, continue it from a checkpoint when train.resume says so, and say what it is."""
    tc = cfg.train
    inject.arm()  # test-only faults; inert unless BDH_* variables are set
    watch_launcher()  # a worker whose launcher dies saves and stops instead of training on
    accelerator, precision = start_accelerator(cfg)
    run_dir, resume_from, layout, claim = claim_run_dir(cfg, accelerator)
    try:  # until the run directory is written, a refusal leaves it as it was
        if resume_from is not None and (relaid := relay_lanes(layout, accelerator.num_processes, tc)):
            accelerator.print(relaid)  # another number of processes: the same global lanes, dealt anew
        data = make_data(cfg, accelerator, resume_from)
        model, optimizer = make_model(cfg, accelerator, precision, data, resume_from)
        checkpoints = Checkpointer(run_dir, accelerator, cfg, data.tokenizer)
        resumed, resume_from = resume(checkpoints, resume_from, tc, model, optimizer, data, accelerator)

        def write():  # on the main process, every check passed
            write_run_dir(run_dir, cfg, data.tokenizer, resumed.step)
            data.save_held_out(run_dir)  # stream lanes: the held-out set, for resumes

        from_main(accelerator, write)
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise
    return assemble(cfg, accelerator, precision, run_dir, claim, data, model, optimizer, checkpoints, resumed,
                    resume_from)


def start_accelerator(cfg: RunConfig) -> tuple[Accelerator, str]:
    """The accelerator and its precision, and what must hold before a directory is claimed or a
    weight allocated: the attention backend runs here, one step fits in memory, out_dir is writable."""
    accelerator, precision = make_accelerator(cfg)
    check_backend(cfg.model, accelerator.device)
    accelerator.print(check_memory(cfg, accelerator, precision))
    from_main(accelerator, lambda: writable_ancestor(cfg.train.out_dir))
    return accelerator, precision


def make_model(cfg: RunConfig, accelerator: Accelerator, precision: str, data: DataBundle, resume_from: Path | None):
    """(prepared model, optimizer) from the recipe (or train.init_from's weights), every rank alike,
    checked against the data before step 1 (preflight.py)."""
    tc = cfg.train
    weights = start_weights(cfg, data.tokenizer, accelerator, resume_from)  # train.init_from, checked
    # Every rank initializes the same weights: FSDP keeps each rank's own shard of its own init
    # (DDP would broadcast rank 0's). Dropout then differs across ranks; data order never does.
    set_seed(tc.seed)
    model, optimizer = make_model_and_optimizer(cfg, accelerator, precision, weights)
    set_seed(tc.seed, device_specific=True)
    preflight(cfg, data, model, accelerator)
    return model, optimizer


def resume(checkpoints: Checkpointer, resume_from: Path | None, tc, model, optimizer, data: DataBundle,
           accelerator: Accelerator) -> tuple[Resumed, Path | None]:
    """Where the run stands: step 0, or a checkpoint read and checked on every rank (nothing written)."""
    if resume_from is None:
        return Resumed(0, 0, [None] * tc.grad_accum_steps, None), None
    return load_readable(checkpoints, resume_from, tc, model, optimizer, data.train, accelerator.print)


def assemble(cfg, accelerator, precision, run_dir, claim, data, model, optimizer, checkpoints, resumed,
             resume_from) -> Run:
    """The Run, with its schedule, guard, trackers and metrics log, at the step it stands; the line
    that says what it is."""
    tc = cfg.train
    scheduler = make_schedule(tc, optimizer, resumed.step)
    guard = BadStepGuard(tc.max_bad_steps, accelerator.scaler, last_checkpoint=lambda: checkpoints.last)
    if resumed.faults is not None:
        guard.load_state_dict(resumed.faults)
    trackers = Trackers(accelerator, cfg.tracking, run_dir)
    # the W&B run goes on when the run does (same run dir); a fork from another run's checkpoint is a new one
    continues = resume_from is not None and run_dir.resolve() in Path(resume_from).resolve().parents
    trackers.start(cfg.tracking, run_dir.name, cfg.to_dict(), saved_trackers(resume_from) if continues else {})
    checkpoints.trackers = trackers.state_dict()
    raw_model = accelerator.unwrap_model(model)
    run = Run(cfg=cfg, accelerator=accelerator, precision=precision, data=data, model=model, raw_model=raw_model,
              optimizer=optimizer, scheduler=scheduler, run_dir=run_dir, checkpoints=checkpoints, guard=guard,
              log=MetricsLog(run_dir / METRICS, accelerator.is_main_process), trackers=trackers,
              samples=SampleTable(trackers), claim=claim,
              mfu=MFU(cfg.model, accelerator.device, precision, accelerator.num_processes, cfg.tracking.peak_tflops),
              step=resumed.step, tokens=resumed.tokens, carried=resumed.states, bad_records=data.bad_records)
    accelerator.print(f"run {run_dir} | {cfg.model.arch} {raw_model.num_params() / 1e6:.2f}M params | "
                      f"{accelerator.num_processes} process(es) on {accelerator.device} | precision {precision}"
                      + (f" | resumed from {resume_from} at step {run.step}" if resume_from is not None else ""))
    if tc.push_to_hub and (why := missing_credentials()):
        accelerator.print(f"train.push_to_hub={tc.push_to_hub}: {why}; final/ will be saved "
                          "but not pushed")
    return run
