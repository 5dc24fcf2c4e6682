"""Set up a run on every rank of an `accelerate launch` and write, per rank, whether the weights it
holds equal a model file's bit for bit, with its step and optimizer state (tests/test_init_from.py).

    accelerate launch ... tests/helpers/init_ranks.py SOURCE.safetensors OUT_DIR RECIPE [overrides]

Under FSDP a rank holds shards: each parameter is gathered (every rank takes part), so a rank
whose shard differs makes the comparison fail everywhere.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bdh_scale.config import load_config
from bdh_scale.train.setup import setup


def main(source: str, out_dir: str, recipe: str, *overrides: str) -> None:
    run = setup(load_config(recipe, list(overrides)))
    try:
        expected = load_file(source)
        held = {name: value.full_tensor() if hasattr(value, "full_tensor") else value
                for name, value in run.raw_model.state_dict().items()}
        rank = run.accelerator.process_index
        report = {"rank": rank, "processes": run.accelerator.num_processes,
                  "distributed": run.accelerator.distributed_type.value, "step": run.step,
                  "optimizer_state": len(run.optimizer.state_dict()["state"]),
                  "equal": held.keys() == expected.keys()
                  and all(torch.equal(held[k].cpu(), expected[k]) for k in expected)}
        (Path(out_dir) / f"rank_{rank}.json").write_text(json.dumps(report))
        run.accelerator.wait_for_everyone()
    finally:
        run.data.close()
        if run.claim is not None:
            run.claim.release()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
