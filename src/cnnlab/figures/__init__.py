"""TensorBoard figures, one module per task; here what they share: the writer and displayable images."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown
import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from torch import Tensor  # noqa: E402


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
