"""An analysis's figure and numbers sent to the trackers the run itself logged to (tracking.backend):
the same W&B run (its id from the newest checkpoint), the run directory's TensorBoard logs, at
the run's last step. A run without trackers gets nothing here; its JSON and PNG are the result.
"""
from __future__ import annotations

from pathlib import Path

from bdh_scale.rundir import read_metrics


def log_to_run_trackers(run_dir: str | Path, cfg, name: str, metrics: dict, png: Path) -> list[str]:
    """Log `metrics` and the figure `png` (as image `name`) to the run's trackers; their names."""
    if not cfg.tracking.trackers:
        return []
    import numpy as np
    from accelerate import Accelerator
    from matplotlib.image import imread

    from bdh_scale.train.checkpoint.checkpointer import list_checkpoints, saved_trackers
    from bdh_scale.train.report.tracking import Trackers

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    step = rows[-1]["step"] if rows else 0
    checkpoints = list_checkpoints(run_dir)
    accelerator = Accelerator(cpu=True, log_with=cfg.tracking.trackers)
    trackers = Trackers(accelerator, cfg.tracking, run_dir)
    trackers.start(cfg.tracking, cfg.train.run_name, cfg.to_dict(), saved_trackers(checkpoints[-1] if checkpoints else None))
    accelerator.log(metrics, step=step)
    images = (imread(png)[None, ..., :3] * 255).astype(np.uint8)  # one RGB image, (1, H, W, 3)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: images}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):  # W&B and the others: a list of HWC arrays
            tracker.log_images({name: list(images)}, step=step)
    trackers.end()
    return list(trackers.names)
