"""Why a run stops early, as exception types the CLI can map to exit codes without importing torch.

CheckpointError: a checkpoint cannot be used (missing, truncated, corrupted, or written for a
different recipe); the message names the checkpoint and what differs. Exit code 2, like a bad
recipe: nothing was trained.

TrainingStopped: training went non-finite too many steps in a row (train.max_bad_steps); the
message says which steps and where the last good checkpoint is. Exit code 3.
"""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


class TrainingStopped(RuntimeError):
    """The run stopped itself (too many consecutive non-finite steps); checkpoints are intact."""
