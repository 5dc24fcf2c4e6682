"""Why a command stops early, as exception types the command lines map to exit codes.

Every user mistake is a UsageError: the command prints its message as one `error:` line and exits
with code 2, having written nothing. The message starts with the key or file at fault and says
what would be right.

    ConfigError      a recipe, override or config.json that cannot run (utils/schema.py, config.py)
    DataError        a data source, tokenizer or lane layout that cannot work (data/)
    CheckpointError  a checkpoint that cannot be resumed: missing, damaged, or for another recipe
    ModelError       a model directory or Hub id that cannot be loaded (model/pretrained.py)
    AnalysisError    an input an analysis cannot use (analysis/)
    RunDirBusy       the run directory is held by another live run (rundir.py)

TrainingStopped is not a mistake: the run went non-finite train.max_bad_steps steps in a row
and stopped itself with its checkpoints intact (exit code 3). A Fault is the machine's failure,
not the input's (a full disk while saving): one `error:` line saying what is intact, exit code 1.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Input the user can fix; the message says what is wrong and what would be right."""


class ConfigError(UsageError):
    """A recipe or override the trainer cannot run."""


class DataError(UsageError):
    """A data source, tokenizer or lane layout that cannot work, with the fix in the message."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


class ModelError(UsageError):
    """A saved model that cannot be loaded: no such directory or Hub repo, missing files, wrong class."""


class AnalysisError(UsageError):
    """An input the analysis cannot use; the message says what would work."""


class RunDirBusy(UsageError):
    """Another live run holds the run directory's lock; the message names it (pid, host, start)."""


class TrainingStopped(RuntimeError):
    """The run stopped itself (too many consecutive non-finite steps); checkpoints are intact."""


class Fault(RuntimeError):
    """The machine failed the run (a write that ran out of disk); the message says what is intact."""
