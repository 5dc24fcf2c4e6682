"""What changes when the same loop runs as several processes (DDP, FSDP, or CPU processes on gloo).

Little does: Accelerate wraps the model (DDP/FSDP) and all-reduces gradients; each rank reads its
own lanes (bdh_scale.data.lanes.stretch), so the global batch is W x B lanes x T tokens. What is left is
here: which backend a CPU-only multi-process launch gets, which plans are refused, how ranks agree
on a per-step decision, and how logged throughput is measured across ranks.

FSDP on CPU processes. torch's FSDP2 (`fully_shard`) shards over a CPU device mesh with gloo, but
Accelerate (up to at least 1.15) sets up CPU processes as MULTI_CPU, which it wraps in DDP, and it
only turns a launch config's FSDP on for accelerator-device types (accelerate/state.py,
AcceleratorState.__init__: the FSDP switch sits in the branch for MULTI_GPU, MULTI_NPU, ...): an
FSDP launch on CPUs silently trained as DDP. `shard_cpu_processes` completes Accelerate's state
instead: distributed type FSDP with the plugin the launch config describes, so prepare() shards
with FSDP2 as on GPUs. FSDP1 on CPU processes is refused (its CPU support is not what the tests
exercise), and so is any FSDP launch Accelerate does not end up running as FSDP2.
"""
from __future__ import annotations

import os

import accelerate
import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, broadcast_object_list
from torch.distributed.tensor import DTensor

from bdh_scale.errors import ConfigError


def fsdp_requested() -> bool:
    """Whether the launch config asks for FSDP (accelerate launch sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def use_cpu_processes() -> bool:
    """Launched processes and no GPU: run them on the CPU over gloo.

    `accelerate launch --num_processes 2` (and torchrun) start the workers with WORLD_SIZE set,
    but Accelerate joins them into one group only on a GPU or when told it is on the CPU. Without
    this, two workers on a CPU-only machine would each train alone and write the same files. An
    FSDP launch needs the process group even for one process.
    """
    if torch.cuda.is_available():
        return False
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or (fsdp_requested() and "LOCAL_RANK" in os.environ)


def launcher_processes(cmdline: list[str]) -> int | None:
    """The --num_processes an `accelerate launch` command line asked for, None if it asked none."""
    if not any(arg == "launch" or arg.endswith("commands.launch") for arg in cmdline):
        return None
    for i, arg in enumerate(cmdline):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(cmdline) and cmdline[i + 1].isdigit():
                return int(cmdline[i + 1])
            if arg.startswith(flag + "=") and arg.split("=", 1)[1].isdigit():
                return int(arg.split("=", 1)[1])
    return None


def check_launch(num_processes: int) -> None:
    """ConfigError when `accelerate launch` asked for several processes and this is the only one:
    its --cpu (MULTI_CPU) launcher starts several CPU processes only through mpirun, and otherwise
    starts one, silently training another global batch than the one asked for."""
    if num_processes > 1 or "WORLD_SIZE" in os.environ:
        return
    try:
        import psutil

        asked = launcher_processes(psutil.Process().parent().cmdline())
    except Exception:  # no parent to read (a container's init, permissions): nothing to say
        return
    if asked and asked > 1:
        raise ConfigError(f"accelerate launch asked for {asked} processes and started one (its --cpu launcher runs "
                          "several only under mpirun); on CPUs launch them with torchrun workers over gloo: "
                          f"accelerate launch --config_file launch/cpu_2proc.yaml --num_processes {asked} train.py ...")


def shard_cpu_processes(accelerator) -> None:
    """Run CPU processes as FSDP2, as the launch config asks (see the module docstring)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
    if plugin.fsdp_version != 2:
        raise ConfigError(f"fsdp_version: {plugin.fsdp_version} on CPU processes; FSDP on CPUs runs as FSDP2 only "
                          "(launch/fsdp.yaml: fsdp_version: 2)")
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise ConfigError(f"the launch config asks for FSDP, but Accelerate set up {accelerator.distributed_type.value} "
                          f"on {accelerator.device}; FSDP needs processes joined in a group (accelerate launch "
                          "--config_file launch/fsdp.yaml), refusing rather than training unsharded")
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # read back by every new state object
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    if not accelerator.is_fsdp2:
        raise ConfigError(f"accelerate {accelerate.__version__} does not run FSDP2 on CPU processes here; launch "
                          "with launch/multi_gpu.yaml or launch/cpu_2proc.yaml (DDP), or on GPUs")


def describe_plan(accelerator) -> str:
    """One line: how the processes share the work (the first line a run prints)."""
    n, device, kind = accelerator.num_processes, accelerator.device, accelerator.distributed_type
    backend = getattr(accelerator.state, "backend", None)
    over = f"over {n} process{'es' if n > 1 else ''} on {device.type}" + (f" ({backend})" if backend else "")
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        mode = "FULL_SHARD" if plugin.reshard_after_forward in (True, "FULL_SHARD") else "SHARD_GRAD_OP"
        return (f"distributed: FSDP{plugin.fsdp_version} ({mode}) {over}: parameters, gradients and optimizer state "
                "sharded")
    if kind in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        return f"distributed: DDP {over}: parameters and optimizer state replicated, gradients all-reduced"
    return f"distributed: none, 1 process on {device}"


def full_value(t):
    """A replicated DTensor (FSDP's gradient norm) as a plain tensor; other tensors as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def check_parallel_plan(accelerator, tc) -> None:
    """Refuse combinations that cannot work, before any data is read."""
    if accelerator.distributed_type == DistributedType.FSDP and tc.optim == "muon":
        raise ConfigError("train.optim=muon needs whole weight matrices (Newton-Schulz per matrix) but FSDP "
                          "shards them; use train.optim=adamw with FSDP, or DDP (launch/multi_gpu.yaml) with muon")


def any_rank(accelerator, *flags: bool) -> list[bool]:
    """For each flag, whether it is set on any rank: one all-reduce of a few numbers per step."""
    if accelerator.num_processes == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([float(bool(f)) for f in flags], device=accelerator.device)
    t = accelerator.reduce(t, reduction="sum")
    return [bool(v > 0) for v in t.tolist()]


def slowest(accelerator, seconds: float) -> float:
    """The longest of the ranks' times: global tokens/s is the global tokens over the slowest rank."""
    if accelerator.num_processes == 1:
        return seconds
    t = accelerator.gather(torch.tensor([seconds], dtype=torch.float64, device=accelerator.device))
    return float(t.max())


def from_main(accelerator, fn):
    """Run fn() on the main process only and hand its result (or its error) to every rank.

    For decisions that read shared files (which checkpoint to resume, which run directory): one
    process decides, so ranks cannot disagree because one of them saw a half-written file.
    """
    box = [None]
    if accelerator.is_main_process:
        try:
            box = [("ok", fn())]
        except Exception as e:  # re-raised on every rank below
            box = [("error", e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# What a collective raises when a peer process is gone (gloo: the connection reset or closed) or
# does not answer within the process group's timeout (train.collective_timeout_s).
LOST_PEER = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout")


def lost_peer(e: BaseException) -> str | None:
    """The one line for a collective that failed because another process died or hangs; None when
    `e` is something else or this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    dist_error = getattr(torch.distributed, "DistError", ())
    text = " ".join(str(e).split())
    if not (isinstance(e, dist_error) or (isinstance(e, RuntimeError) and any(k in text.lower() for k in LOST_PEER))):
        return None
    return (f"another process of the run died or stopped answering, and a collective with it failed "
            f"({type(e).__name__}: {text[:160]}); the newest checkpoint is intact: once every process can run, "
            "continue with train.resume=auto (a hang is cut after train.collective_timeout_s)")
