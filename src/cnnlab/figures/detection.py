"""Detection figures: predicted boxes beside the ground truth, and the augmented training boxes.

Every validation epoch draws the same first validation images (the loader keeps its order), so TensorBoard's
step slider shows the detector learning; the test epoch draws the first test images once. Small images are
enlarged for display so that the captions stay readable.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import make_grid

from cnnlab.figures import FigureCallback
from cnnlab.serving import draw

#: the side of the square each image is shown in
DISPLAY = 256


class DetectionFigures(FigureCallback):
    """Logs ``val/detections``, ``test/detections`` (prediction | truth) and ``train/augmented_samples``."""

    def __init__(self, num_images: int = 8, score_threshold: float = 0.5) -> None:
        self.num_images, self.score_threshold = num_images, score_threshold
        self.shown: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]] = []
        self.logged_training = False

    # --- what the network trains on ----------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.logged_training:
            return
        self.logged_training = True
        writer = self.writer(trainer)
        if writer is None:
            return
        names = class_names(pl_module)
        images, targets = batch
        panels = [
            panel(image, target["boxes"], target["labels"], names)
            for image, target in zip(images[: self.num_images], targets, strict=False)
        ]
        writer.add_image("train/augmented_samples", make_grid(panels, nrow=4, padding=4, pad_value=255), 0)

    # --- predictions beside the truth --------------------------------------------------------------------

    def start(self, stage: str, pl_module: L.LightningModule) -> None:
        self.shown = []

    def collect(
        self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images, targets = batch
        for image, target, found in zip(images, targets, outputs["detections"], strict=True):
            if len(self.shown) >= self.num_images:
                return
            self.shown.append((image.detach().cpu(), _cpu(target), _cpu(found)))

    def finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None or not self.shown:
            return
        grid = comparison_grid(self.shown, class_names(pl_module), self.score_threshold)
        writer.add_image(f"{stage}/detections", grid, trainer.global_step)


def class_names(pl_module: L.LightningModule) -> list[str]:
    """The data's class names, as the task's contract carries them."""
    return list(getattr(pl_module, "contract", {}).get("class_names", []))


def _cpu(values: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().cpu() for key, value in values.items()}


def panel(
    image: Tensor, boxes: Tensor, labels: Tensor, names: list[str], scores: Tensor | None = None
) -> Tensor:
    """The image enlarged or shrunk to fit a ``DISPLAY`` square (padded), its boxes drawn: uint8 (3, S, S)."""
    height, width = image.shape[-2:]
    scale = DISPLAY / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    shown = F.resize(image, size, antialias=True)
    drawn = torch.from_numpy(draw.boxes(shown, boxes * scale, labels.tolist(), names, scores)).permute(
        2, 0, 1
    )
    return torch.nn.functional.pad(drawn, [0, DISPLAY - size[1], 0, DISPLAY - size[0]], value=255)


def comparison_grid(
    shown: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]], names: list[str], threshold: float
) -> Tensor:
    """Rows of (prediction | truth) pairs: detections scoring at least ``threshold``, then the true boxes."""
    pairs = []
    for image, target, found in shown:
        keep = found["scores"] >= threshold
        predicted = panel(image, found["boxes"][keep], found["labels"][keep], names, found["scores"][keep])
        truth = panel(image, target["boxes"], target["labels"], names)
        gap = torch.full((3, DISPLAY, 4), 255, dtype=torch.uint8)
        pairs.append(torch.cat([predicted, gap, truth], dim=2))
    return make_grid(pairs, nrow=2, padding=8, pad_value=255)
