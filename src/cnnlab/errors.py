"""The mistakes cnnlab explains: config, files or data a run cannot use; each message says what to do.

An error of these classes is shown as its message alone (the traceback goes to the run's train.log); any other
exception is a bug and keeps its traceback. Nothing is imported here, so light modules (predict, the readers)
can raise them.
"""

import re


class CnnlabError(Exception):
    """A problem with what the user gave cnnlab; the message names the key or file and the fix."""


class ConfigError(CnnlabError, ValueError):
    """A configuration a run cannot start with."""


class DataError(CnnlabError, ValueError):
    """Data on disk that cannot be used as it is."""


class CheckpointError(CnnlabError, ValueError):
    """A checkpoint or exported model that cannot be read, or a checkpoint that could not be written."""


class RunInterrupted(CnnlabError):
    """The run was stopped by the user (Ctrl-C); the message says how to resume it."""


class ClassCountError(ConfigError):
    """A dataset with another number of classes than ``data.num_classes``; ``found`` holds its class names."""

    def __init__(self, message: str, found: list[str]) -> None:
        super().__init__(message)
        self.found = found


#: how torch re-raises an exception from a DataLoader worker: its name, then the worker's whole traceback
_WORKER = re.compile(r"\ACaught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def _names(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_names(sub) for sub in cls.__subclasses__()))


def unwrap_worker_error(err: BaseException) -> CnnlabError | None:
    """The cnnlab error that ``err`` is, with its own message: torch re-raises an error of a DataLoader
    worker with the worker's traceback as its message (or as a RuntimeError, when the error's class takes
    other arguments). None when ``err`` is no cnnlab error."""
    text = str(err)
    found = _WORKER.match(text)
    if found is None or found.group(1) not in _names(CnnlabError):
        return err if isinstance(err, CnnlabError) else None
    # the traceback ends with "module.Name: message", the message perhaps on several lines
    last = list(re.finditer(rf"^(?:[\w.]+\.)?{found.group(1)}: ", text, flags=re.MULTILINE))[-1]
    mistake = (type(err) if isinstance(err, CnnlabError) else CnnlabError)(text[last.end() :].strip())
    mistake.__cause__ = err  # the worker's traceback stays in the run's log
    return mistake
