"""How a run computes: which mixed precision it gets on this device, whether its attention backend
can run here (checked before step 1), which window lengths `auto` gives to flash-linear-attention
on a GPU, and torch.compile with a graph budget that covers the curriculum.

Precision: fp16 needs a loss scaler and a GPU (CUDA or MPS); bf16 is fast on recent CUDA GPUs only
(on a CPU bf16 matmuls can be hundreds of times slower than fp32). A recipe written for an M1 or a
GPU must still run on a laptop CPU, so instead of failing it falls back to fp32 and says so once.

Compiled graphs (BDH.compile): one per training window length, two with document resets (windows
with and without a boundary), plus those of validation and samples (a stateless and a carried
reading at the validation length, a prompt and a one-token step). Dynamo falls back to eager
without a word once a function has more graphs than its recompile limit (8 by default), so the
limit is raised to cover a long curriculum.
"""
from __future__ import annotations

import torch

from bdh_scale.errors import ConfigError
from bdh_scale.model.bdh.attention import fla
from bdh_scale.model.bdh.attention.fla_tune import fla_wins, tune
from bdh_scale.train.distributed import from_main
from bdh_scale.utils.perf import compute_dtype

EVAL_AND_SAMPLE_GRAPHS = 8  # validation (window, carried; each with and without boundaries), diagnostics, samples


def resolve_mixed_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(precision to use, notice to print or None)."""
    kind = device.type
    if requested == "no":
        return "no", None
    if kind == "cpu":
        return "no", (f"notice: train.mixed_precision={requested} needs a GPU (CUDA or MPS); "
                      "this run is on the CPU and uses fp32 instead")
    if kind == "mps" and requested == "bf16":
        return "fp16", "notice: bf16 is not supported on MPS; using fp16 with loss scaling instead"
    if kind == "cuda" and requested == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "notice: this GPU has no bf16; using fp16 with loss scaling instead"
    return requested, None


def check_backend(model_cfg, device) -> None:
    """model.attn_backend=fla where it cannot run is one error before anything is written."""
    if model_cfg.attn_backend == "fla" and (why := fla.unavailable(device)) is not None:
        raise ConfigError(f"model.attn_backend=fla: {why}; use model.attn_backend=auto (or chunked) here")


def graph_budget(tc) -> int:
    """The most graphs a compiled run makes (module docstring)."""
    return 2 * len(tc.lengths()) + EVAL_AND_SAMPLE_GRAPHS


def compile_model(model, tc) -> None:
    """torch.compile in place, with a recompile limit that covers every length of the run."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, graph_budget(tc))
    model.compile()


def tune_attention(model, cfg, accelerator, precision: str) -> dict:
    """attn_backend auto with fla usable here: measure it against auto's own choice at every training
    length (fla_tune.py) on the main process, so that every rank takes the same forms, and say what
    was chosen. {} when there is nothing to choose."""
    if not hasattr(model, "fla_lengths"):
        return {}
    tc = cfg.train
    found = from_main(accelerator, lambda: tune(cfg.model, tc.lengths(), tc.batch_size, accelerator.device,
                                                compute_dtype(precision), tc.state == "carry"))
    model.fla_lengths = fla_wins(found)
    for T, r in found.items():
        times = ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in r.items() if k != "chosen")
        accelerator.print(f"attention at T={T}: {r['chosen']} (one layer's forward and backward: {times})")
    return found
