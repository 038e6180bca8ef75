"""The mistakes cnnlab explains: config, files or data a run cannot use; each message says what to do.

An error of these classes is shown as its message alone (the traceback goes to the run's train.log); any other
exception is a bug and keeps its traceback. Nothing is imported here, so light modules (predict, the readers)
can raise them.
"""


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
