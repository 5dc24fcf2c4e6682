"""The run's result: <run_dir>/final, the trained weights as a save_pretrained directory."""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import DistributedType

from bdh_scale.model import build_model
from bdh_scale.rundir import FINAL


def save_final(accelerator, model, model_config, run_dir: Path):
    """Write <run_dir>/final on the main process; returns the model there (None on other ranks).

    Every rank must call it: under FSDP the full weights are gathered from all ranks first and
    loaded into a fresh, unsharded copy; otherwise the trained model itself is saved.
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        weights = accelerator.get_state_dict(model)  # collective: every rank takes part
        final = None
        if accelerator.is_main_process:
            final = build_model(model_config)
            final.load_state_dict(weights)
    else:
        final = accelerator.unwrap_model(model) if accelerator.is_main_process else None
    if final is not None:
        final.save_pretrained(run_dir / FINAL)
    accelerator.wait_for_everyone()
    return final
