"""A reader's error raised inside a DataLoader worker reaches the user as the reader's own paragraph."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
from fakedata import write_image_folder
from torch.utils.data import DataLoader, Dataset

from cli.test_cli import QUIET, ROOT, run
from cnnlab.data.errors import DatasetFormatError
from cnnlab.errors import ClassCountError, CnnlabError, unwrap_worker_error


class Failing(Dataset):
    """Raises ``error`` when its only item is read."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> None:
        raise self.error


def raised_in_a_worker(error: Exception) -> BaseException:
    """What a loop over a DataLoader with one worker receives when the dataset raises ``error``."""
    batches = iter(DataLoader(Failing(error), num_workers=1))
    try:
        next(batches)
    except Exception as err:  # what torch re-raises
        # the traceback's frames hold the iterator: cleared, it shuts its worker down now; left in that
        # reference cycle, the garbage collector would at some later test, after a 5 s wait on the worker
        traceback.clear_frames(err.__traceback__)
        return err
    finally:
        del batches
    raise AssertionError("the worker raised nothing")


def test_a_worker_error_is_unwrapped_to_the_readers_message() -> None:
    message = "data/train/cat/01.jpg: unreadable image: truncated\nfetch the file again"
    wrapped = raised_in_a_worker(DatasetFormatError(message))
    assert "Traceback" in str(wrapped)
    mistake = unwrap_worker_error(wrapped)
    assert isinstance(mistake, DatasetFormatError) and str(mistake) == message
    assert mistake.__cause__ is wrapped


def test_an_error_torch_cannot_rebuild_is_unwrapped_too() -> None:
    # torch re-raises errors whose class takes more arguments as RuntimeError
    wrapped = raised_in_a_worker(ClassCountError("3 classes, data.num_classes=4", ["a", "b", "c"]))
    assert type(wrapped) is RuntimeError
    mistake = unwrap_worker_error(wrapped)
    assert isinstance(mistake, CnnlabError) and str(mistake) == "3 classes, data.num_classes=4"


@pytest.mark.slow
def test_other_errors_are_not_taken_for_a_users_mistake() -> None:
    assert unwrap_worker_error(raised_in_a_worker(ZeroDivisionError("a bug"))) is None
    assert unwrap_worker_error(RuntimeError("CUDA out of memory")) is None
    plain = DatasetFormatError("bad file")
    assert unwrap_worker_error(plain) is plain


@pytest.mark.slow
def test_a_file_spoilt_after_its_check_stops_the_run_with_one_paragraph(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_image_folder(root, ["cat", "dog"], n_per_class=6)
    # through DataLoader workers: in memory, the photos the first run decoded would come from their cache
    args = [str(ROOT / "train.py"), "data=image_folder", f"data.root={root}", "data.num_workers=1"]
    args += ["data.in_memory=false"]
    args += ["trainer.max_epochs=1", "export=null", *QUIET]
    run(*args, f"hydra.run.dir={tmp_path / 'first'}")  # checks every file and caches the result
    # the same size and time as the checked file, other bytes: only reading it in a worker finds it out
    spoilt = sorted((root / "train" / "cat").iterdir())[0]
    stat = spoilt.stat()
    spoilt.write_bytes(b"\0" * stat.st_size)
    os.utime(spoilt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = run(*args, f"hydra.run.dir={tmp_path / 'second'}", check=False)
    assert proc.returncode == 1
    assert f"cnnlab: {spoilt}: not an image" in proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr
