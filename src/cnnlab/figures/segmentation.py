"""Segmentation figures: a fixed set of validation images beside their true and predicted classes."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from torch import Tensor

from cnnlab.figures import FigureCallback, denormalize
from cnnlab.samples import IGNORE_INDEX
from cnnlab.serving import draw


class SegmentationFigures(FigureCallback):
    """Logs ``val/overlays``: image, truth and prediction of the first validation images, every epoch.

    The validation loader does not shuffle, so the same images come back each epoch and the figures show how
    the predictions on them change. The task's ``validation_step`` returns the predicted classes.
    """

    stages = ("val",)

    def __init__(self, num_images: int = 8, alpha: float = 0.7) -> None:
        self.num_images, self.alpha = num_images, alpha
        self.samples: list[tuple[Tensor, Tensor, Tensor]] = []

    def start(self, stage: str, pl_module: L.LightningModule) -> None:
        self.samples = []

    def collect(
        self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if len(self.samples) >= self.num_images:
            return
        images, targets = batch
        for image, mask, pred in zip(images, targets["mask"], outputs["preds"], strict=True):
            if len(self.samples) >= self.num_images:
                break
            self.samples.append((image.detach().cpu(), mask.detach().cpu(), pred.detach().cpu()))

    def finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if not self.samples or writer is None:
            return
        contract = pl_module.contract
        names = contract.get("class_names") or [str(k) for k in range(pl_module.hparams.num_classes)]
        figure = overlays_figure(self.samples, names, contract, self.alpha)
        writer.add_figure(f"{stage}/overlays", figure, trainer.global_step)


def overlays_figure(
    samples: list[tuple[Tensor, Tensor, Tensor]],
    names: list[str],
    contract: dict[str, Any],
    alpha: float = 0.7,
) -> plt.Figure:
    """One row per sample: the image, its true classes and its predicted classes, with a colour legend."""
    rows = max(1, len(samples))
    height = 2.2 * rows + 0.5
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, height), squeeze=False)
    for ax, title in zip(axes[0], ("image", "truth", "prediction"), strict=True):
        ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    shown: set[int] = set()
    for row, (image, mask, pred) in zip(axes, samples, strict=False):
        picture = denormalize(image, contract.get("mean", []), contract.get("std", [])).permute(2, 0, 1)
        truth, predicted = mask.numpy(), pred.numpy()
        row[0].imshow(draw.rgb(picture))
        row[1].imshow(draw.classes(picture, truth, alpha))
        row[2].imshow(draw.classes(picture, predicted, alpha))
        shown |= set(np.unique(truth).tolist()) | set(np.unique(predicted).tolist())
    colours = draw.palette()
    labels = {**dict(enumerate(names)), IGNORE_INDEX: "ignored"}
    handles = [Patch(color=colours[k] / 255, label=labels.get(k, str(k))) for k in sorted(shown) if k != 0]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / height if handles else 0, 1, 1))  # the legend's row: 0.45 inch
    return fig
