"""Where metrics go: metrics.jsonl in the run directory always, and every tracker `tracking.backend`
names (any that Accelerate supports: wandb, tensorboard, mlflow, aim, comet_ml, clearml, dvclive,
swanlab, trackio; one or a list), all with the same keys. Trackers that write files (TensorBoard,
Aim) write them into <run_dir>/logs/<tracking.project>/.

W&B must never hang a run: with no credentials (or tracking.wandb_mode=offline) it logs offline
into the run directory, and the run ends by printing the `wandb sync` command that uploads it. A
resumed run continues the same W&B run: the run id is kept in every checkpoint (Checkpointer's
`trackers`, in trainer_state.json) and given back to wandb.init with resume="allow".
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from bdh_scale.errors import ConfigError
from bdh_scale.utils.schema import words

LOGS = "logs"  # in the run directory: the files of TensorBoard and Aim
# the pip package of each tracker Accelerate supports, where its name is not the package's
PACKAGES = {"comet_ml": "comet-ml"}


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
    """Accelerator(log_with=...): the trackers asked for, each installed here (ConfigError if not)."""
    from accelerate.tracking import get_available_trackers

    available = {getattr(t, "value", str(t)) for t in get_available_trackers()}
    missing = [n for n in tracking.trackers if n not in available]
    if missing:
        raise ConfigError(f"tracking.backend: {words(missing)} not installed here; pip install "
                          f"{' '.join(PACKAGES.get(n, n) for n in missing)}, or leave it out of tracking.backend")
    return tracking.trackers or None


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested config as {"model.n_layer": 6, ...}, lists as text: what TensorBoard's hparams and
    most trackers take (W&B gets the nested form)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = str(value) if isinstance(value, (list, tuple)) else value
    return out


class Trackers:
    """The run's trackers (started through Accelerate on the main process) and what a resume
    needs of them again."""

    def __init__(self, accelerator, tracking, run_dir: Path):
        self.accelerator = accelerator
        self.names = tracking.trackers
        self.run_dir = run_dir
        self.wandb_mode = wandb_mode(tracking.wandb_mode) if "wandb" in self.names else None
        self.wandb_run_id: str | None = None

    def start(self, tracking, run_name: str, config: dict, saved: dict) -> None:
        """Start every tracker; `saved`: state_dict() of the checkpoint this run continues ({} if none)."""
        acc = self.accelerator
        if not self.names:
            return
        acc.project_configuration.logging_dir = str(self.run_dir / LOGS)  # TensorBoard, Aim: files in the run dir
        init_kwargs = {}
        if "wandb" in self.names:
            os.environ.setdefault("WANDB_SILENT", "true")
            wandb = {"mode": self.wandb_mode, "dir": str(self.run_dir), "name": run_name, "resume": "allow"}
            if saved.get("wandb_run_id"):
                wandb["id"] = saved["wandb_run_id"]
            if tracking.entity:
                wandb["entity"] = tracking.entity
            init_kwargs["wandb"] = wandb
        if "mlflow" in self.names:
            init_kwargs["mlflow"] = {"run_name": run_name}
        acc.init_trackers(tracking.project, config=None, init_kwargs=init_kwargs)
        for tracker in acc.trackers:  # each tracker's config in the form it takes
            tracker.store_init_configuration(config if tracker.name == "wandb" else flat(config))
        if "wandb" in self.names and acc.is_main_process:
            self.wandb_run_id = acc.get_tracker("wandb", unwrap=True).id
        acc.print(f"trackers: {', '.join(self.names)}" + (f" (W&B {self.wandb_mode}, run {self.wandb_run_id}, "
                                                           f"in {self.run_dir}/wandb)" if self.wandb_run_id else ""))

    def state_dict(self) -> dict:
        """What a checkpoint keeps for the trackers: the W&B run id, so a resume continues that run."""
        return {"wandb_run_id": self.wandb_run_id} if self.wandb_run_id else {}

    def log_sample(self, step: int, table) -> None:
        """Log the W&B samples table (only W&B gets the samples; metrics.jsonl has each in its row)."""
        self.accelerator.get_tracker("wandb").log({"samples": table}, step=step)

    def sync_command(self) -> str | None:
        """`wandb sync` of this offline W&B run, every resumed part in order (None if nothing to sync)."""
        if self.wandb_mode != "offline" or not self.wandb_run_id:
            return None
        parts = sorted((self.run_dir / "wandb").glob(f"offline-run-*-{self.wandb_run_id}"))
        return f"wandb sync --id {self.wandb_run_id} " + " ".join(str(p) for p in parts) if parts else None

    def end(self) -> None:
        """Finish every tracker; an offline W&B run says how to upload it."""
        self.accelerator.end_training()
        command = self.sync_command() if self.accelerator.is_main_process else None
        if command:
            self.accelerator.print(f"W&B logged offline; upload it with: {command}")


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
    """The samples written at each validation, as one W&B table (step, sample) that grows by a row
    each time: an INCREMENTAL table, so each log sends only the new row. metrics.jsonl gets each
    sample in its validation row instead."""

    def __init__(self, trackers: Trackers):
        self.trackers = trackers
        self.enabled = "wandb" in trackers.names and trackers.accelerator.is_main_process
        self.table = None

    def add(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        import wandb

        if self.table is None:
            self.table = wandb.Table(columns=["step", "sample"], log_mode="INCREMENTAL")
        self.table.add_data(step, text)
        self.trackers.log_sample(step, self.table)
