"""The run's result: <run_dir>/final, a self-contained model directory (model/pretrained.py: config,
weights, tokenizer, model card, recipe), pushed to the Hugging Face Hub at the end when
train.push_to_hub names a repo and credentials exist.
"""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import DistributedType

from bdh_scale.errors import Fault
from bdh_scale.model import build_model
from bdh_scale.model.card import model_card
from bdh_scale.model.pretrained import hub_offline, push_folder
from bdh_scale.rundir import FINAL
from bdh_scale.utils.disk import describe_write_failure, is_write_failure


def save_final(accelerator, model, cfg, run_dir: Path, tokenizer, training: dict, newest_checkpoint=None):
    """Write <run_dir>/final on the main process; returns the model there (None on other ranks).
    `training`: steps, tokens, val_loss, val_bpb and run_name, for the model card.

    Every rank must call it: under FSDP the full weights are gathered from all ranks first and
    loaded into a fresh, unsharded copy; otherwise the trained model itself is saved. A write that
    fails (a full disk) is a Fault naming `newest_checkpoint`, from which a resume writes final/.
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        weights = accelerator.get_state_dict(model)  # collective: every rank takes part
        final = None
        if accelerator.is_main_process:
            final = build_model(cfg.model)
            final.load_state_dict(weights)
    else:
        final = accelerator.unwrap_model(model) if accelerator.is_main_process else None
    if final is not None:
        final.tokenizer, final.recipe = tokenizer, cfg.to_dict()
        final.card = model_card(final, training, where=cfg.train.push_to_hub or str(run_dir / FINAL))
        try:
            final.save_pretrained(run_dir / FINAL)
        except Exception as e:
            if not is_write_failure(e):
                raise
            then = (f"the checkpoint of the last step is {newest_checkpoint}: make room, then run again with "
                    "train.resume=auto to write final/" if newest_checkpoint is not None
                    else "no checkpoint was kept (train.keep_checkpoints=0): make room and train again")
            raise Fault(f"the final model could not be written to {run_dir / FINAL} "
                        f"({describe_write_failure(e, run_dir)}); {then}") from e
    accelerator.wait_for_everyone()
    return final


def missing_credentials() -> str | None:
    """Why nothing can be pushed to the Hub from here, or None when it can be tried."""
    from huggingface_hub import get_token

    if hub_offline():
        return "the Hugging Face Hub is offline here (HF_HUB_OFFLINE)"
    if get_token() is None:
        return "no Hugging Face credentials (set HF_TOKEN or run `hf auth login`)"
    return None


def push_final(run_dir: Path, repo_id: str) -> str:
    """Upload <run_dir>/final to the Hub repo `repo_id`; what happened, in one line. A failed push
    leaves the run a success: the model is on disk, and the line says how to push it later."""
    final = Path(run_dir) / FINAL
    later = f"the model is in {final}; push it later with: hf upload {repo_id} {final}"
    why = missing_credentials()
    if why is not None:
        return f"train.push_to_hub={repo_id}: not pushed, {why}; {later}"
    try:
        url = push_folder(final, repo_id)
    except Exception as e:  # network, permissions, quota: the Hub's own words
        return f"train.push_to_hub={repo_id}: the push failed ({str(e).splitlines()[0]}); {later}"
    return f"pushed {final} to the Hugging Face Hub: {repo_id} ({url})"
