"""Where metrics go: metrics.jsonl in the run directory always, W&B through Accelerate's trackers.

W&B must never hang a run: with no credentials (or tracking.wandb_mode=offline) it logs offline
into the run directory, to be synced later with `wandb sync`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def wandb_mode(requested: str) -> str:
    """auto: online only when credentials exist (WANDB_API_KEY or a netrc entry), else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def accelerate_log_with(tracking) -> list[str] | None:
    return ["wandb"] if tracking.backend == "wandb" else None


def init_trackers(accelerator, tracking, run_dir: Path, run_name: str, config: dict) -> None:
    if tracking.backend != "wandb":
        return
    mode = wandb_mode(tracking.wandb_mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    kwargs = {"mode": mode, "dir": str(run_dir), "name": run_name}
    if tracking.entity:
        kwargs["entity"] = tracking.entity
    accelerator.init_trackers(tracking.project, config=config, init_kwargs={"wandb": kwargs})
    accelerator.print(f"W&B: logging {mode} into {run_dir}/wandb")


class MetricsLog:
    """Append-only metrics.jsonl (one JSON object per logged step), written by the main process.

    Every line is strict JSON: a non-finite number (a window of skipped steps has no loss) is
    written as null; the row's `bad_steps` counts the skipped steps."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: finite_or_none(v) for k, v in record.items()}, allow_nan=False) + "\n")
            f.flush()


def finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class SampleTable:
    """The samples written at each validation, as one growing W&B table (step, sample). W&B tables
    are immutable once logged, so every log sends all rows so far; the newest table is the one the
    dashboard shows. metrics.jsonl gets each sample in its validation row instead."""

    def __init__(self, accelerator, tracking):
        self.accelerator = accelerator
        self.enabled = tracking.backend == "wandb" and accelerator.is_main_process
        self.rows: list[list] = []

    def add(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        import wandb

        self.rows.append([step, text])
        self.accelerator.log({"samples": wandb.Table(columns=["step", "sample"], data=self.rows)}, step=step)
