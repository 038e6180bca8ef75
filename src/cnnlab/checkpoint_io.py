"""Reading and writing checkpoint files safely: plain contents only, and never half a file.

Reading uses torch's ``weights_only=True``: tensors and plain values, never code. A file that is truncated, of
another kind, or holds objects is refused with a message that says what it is. Writing goes to a temporary
file beside the checkpoint, renamed over it only when complete, so a full disk or a crash leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from cnnlab.errors import CheckpointError


def load_plain(path: str | Path, what: str = "checkpoint") -> Any:
    """The contents of a torch file of tensors and plain values, or a ``CheckpointError`` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                f"{path} holds objects besides tensors and plain values (classes, functions: possibly "
                f"code that would run on loading). cnnlab reads only plain {what}s, as its own runs write "
                "them, and does not load this one. Use a checkpoint written by cnnlab's train.py."
            ) from None
        raise CheckpointError(_unreadable(path, what, err)) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(_unreadable(path, what, err)) from None


def _unreadable(path: Path, what: str, err: BaseException) -> str:
    reason = " ".join(str(err).split())[:200]
    return (
        f"{path} is not a readable {what}: it is truncated (an interrupted copy or run?) or another kind "
        f"of file ({type(err).__name__}: {reason})"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing to a temporary file beside the target and renaming it over."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, target)  # atomic on one file system: readers see the old file or the new one
        except OSError as err:
            partial.unlink(missing_ok=True)
            kept = f"the previous {target.name} is unchanged" if target.is_file() else "no earlier one exists"
            raise CheckpointError(
                f"could not write the checkpoint {target} ({err.strerror or err}); {kept}. Free space on "
                f"that disk, or set paths.output_root to a folder on another one, then continue the run "
                f"with resume={target.parent.parent}"
            ) from err


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` every epoch, what ``resume=`` continues from. When another checkpoint
    callback (the best) wrote this very step, last.ckpt becomes a hard link to that file: the same bytes,
    serialised and written once instead of twice."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        twin = next(
            (
                c
                for c in trainer.checkpoint_callbacks
                if c is not self
                and isinstance(c, ModelCheckpoint)
                and c._last_global_step_saved == trainer.global_step
                and c._last_checkpoint_saved
                and c.save_weights_only == self.save_weights_only
            ),
            None,
        )
        if twin is None:
            super()._save_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            link_atomically(Path(twin._last_checkpoint_saved), Path(filepath))
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def link_atomically(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy where links are not possible), replaced in one step."""
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)
