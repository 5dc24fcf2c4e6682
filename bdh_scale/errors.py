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
A DataFailedMidRun is the data failing mid-run (a bad record under data.on_bad_record=stop, a file that
vanished, a host that stopped answering): the run saved a checkpoint at its last completed step,
and the line names the file, what happened and how to go on (exit code 1). The same data
refused before step 1 is a DataError (exit code 2).
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


class CheckpointUnreadable(CheckpointError):
    """A checkpoint whose files pass the manifest but cannot be read (a resume falls back to an older one)."""


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


class DataFailedMidRun(Fault):
    """The data failed a run: `what` names the file (and row) and what happened, `advice` how to go
    on. The stream lanes raise it; the loop saves a checkpoint at the last completed step and raises
    it again with `saved` set, agreed by every rank, so that it is said once."""

    def __init__(self, what: str, advice: str, saved: str | None = None):
        super().__init__(what, advice, saved)
        self.what, self.advice, self.saved = what, advice, saved

    def __str__(self) -> str:
        if self.saved:
            return f"{self.what}; {self.saved}; {self.advice}, then continue with train.resume=auto"
        return f"{self.what}; {self.advice}"
