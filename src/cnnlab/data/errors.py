"""The errors a datamodule raises when its files are missing or unreadable, saying what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError, DataError


class DatasetNotFoundError(CnnlabError, FileNotFoundError):
    """A dataset's files are not on disk (and could not be downloaded); the message says where to put them."""


class DatasetFormatError(DataError):
    """A dataset's files are on disk but not laid out or encoded the way the datamodule reads them."""


def dataset_not_found(
    name: str, folder: Path, expected: Sequence[str], reason: str, instructions: str
) -> DatasetNotFoundError:
    """An error saying which files of ``name`` are missing from ``folder``, why, and how to provide them."""
    missing = [f for f in expected if not (folder / f).exists()]
    return DatasetNotFoundError(
        f"{name} is not in {folder} ({reason}).\n"
        f"Expected files: {', '.join(expected)}\n"
        f"Missing: {', '.join(missing) if missing else 'none (but the folder was not usable)'}\n"
        f"{instructions}"
    )
