"""TensorBoard figures, one module per task; here what they share: the writer and displayable images."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as L
import matplotlib
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor


def off_screen() -> None:
    """Draw figures without a window: they go to files and TensorBoard, never shown.

    In a notebook the inline backend stays: it shows the user's own figures and needs no window either.
    """
    if not os.environ.get("MPLBACKEND", "").endswith("backend_inline"):
        matplotlib.use("Agg")


off_screen()


def tensorboard(trainer: L.Trainer) -> Any | None:
    """The TensorBoard SummaryWriter of the run, or None when TensorBoard is not among its loggers."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def denormalize(image: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """Undo ``Normalize`` for display: an image in [0, 1], channels last."""
    if mean and std:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return image.clamp(0, 1).permute(1, 2, 0)


class FigureCallback(L.Callback):
    """A task's figures, gathered from its validation (the sanity check left out) and test loops.

    Subclasses name the ``stages`` they show ("val", "test") and implement three steps, each told the stage:
    ``start`` empties what they gather, ``collect`` takes a batch and the step's outputs (on every process,
    so that metrics they compute stay in step under DDP), ``finish`` draws; ``writer`` is TensorBoard on the
    main process, else None.
    """

    stages: tuple[str, ...] = ("val", "test")

    def start(self, stage: str, pl_module: L.LightningModule) -> None:
        """Called as a loop of ``stage`` starts."""

    def collect(
        self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after each batch of ``stage``."""

    def finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called as a loop of ``stage`` ends."""

    @staticmethod
    def writer(trainer: L.Trainer) -> Any | None:
        return tensorboard(trainer) if trainer.is_global_zero else None

    def _shows(self, stage: str, trainer: L.Trainer) -> bool:
        return stage in self.stages and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._shows("val", trainer):
            self.start("val", pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._shows("test", trainer):
            self.start("test", pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._shows("val", trainer):
            self.collect("val", pl_module, outputs, batch, batch_idx)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._shows("test", trainer):
            self.collect("test", pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._shows("val", trainer):
            self.finish("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._shows("test", trainer):
            self.finish("test", trainer, pl_module)
