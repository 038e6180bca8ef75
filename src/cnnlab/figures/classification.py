"""Classification figures at test time: a confusion matrix and sample predictions titled with the truth."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnlab.figures import FigureCallback, denormalize


class ClassificationFigures(FigureCallback):
    """Logs a confusion matrix and a grid of test images titled with prediction and truth."""

    stages = ("test",)

    def __init__(self, num_samples: int = 32, max_classes: int = 60) -> None:
        self.num_samples, self.max_classes = num_samples, max_classes
        self.confmat: MulticlassConfusionMatrix | None = None
        self.samples: list[tuple[Tensor, int, int]] = []

    def start(self, stage: str, pl_module: L.LightningModule) -> None:
        num_classes = len(pl_module.contract.get("class_names", [])) or pl_module.hparams.num_classes
        self.confmat = MulticlassConfusionMatrix(num_classes).to(pl_module.device)
        self.samples = []

    def collect(
        self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images, labels = batch
        preds = outputs["scores"].argmax(1)
        assert self.confmat is not None
        self.confmat.update(preds, labels)
        for image, pred, label in zip(images, preds, labels, strict=True):
            if len(self.samples) >= self.num_samples:
                break
            self.samples.append((image.detach().cpu(), int(pred), int(label)))

    def finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.confmat is not None
        matrix = self.confmat.compute().cpu()  # on every process: the counts are gathered across them
        writer = self.writer(trainer)
        if writer is None:
            return
        names = pl_module.contract.get("class_names") or [str(i) for i in range(matrix.shape[0])]
        step = trainer.global_step
        if matrix.shape[0] <= self.max_classes:
            writer.add_figure("test/confusion_matrix", confusion_figure(matrix, names), step)
        contract = pl_module.contract
        writer.add_figure("test/predictions", predictions_figure(self.samples, names, contract), step)


def confusion_figure(matrix: Tensor, names: list[str]) -> plt.Figure:
    """A row-normalised confusion matrix with counts, true classes on rows."""
    n = matrix.shape[0]
    rates = matrix.float() / matrix.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return fig


def predictions_figure(
    samples: list[tuple[Tensor, int, int]], names: list[str], contract: dict[str, Any]
) -> plt.Figure:
    """A grid of images titled 'prediction (truth)', green when right and red when wrong: one picture of
    tiles on one axes (32 axes of their own took a second to draw)."""
    cols = min(8, max(1, len(samples)))
    rows = max(1, math.ceil(len(samples) / cols))
    shown = [denormalize(image, contract.get("mean", []), contract.get("std", [])) for image, _, _ in samples]
    height = max((s.shape[0] for s in shown), default=1)
    width = max((s.shape[1] for s in shown), default=1)
    channels = max((s.shape[2] for s in shown), default=1)
    gap, title = max(1, width // 8), max(2, round(height * 0.3))  # pixels between tiles, above each tile
    tile_h, tile_w = title + height, gap + width
    canvas = torch.ones(rows * tile_h, cols * tile_w, channels)  # white between tiles
    fig, ax = plt.subplots(figsize=(1.6 * cols, 1.8 * rows))
    ax.axis("off")
    for k, (image, (_, pred, label)) in enumerate(zip(shown, samples, strict=True)):
        top, left = (k // cols) * tile_h + title, (k % cols) * tile_w + gap // 2
        canvas[top : top + image.shape[0], left : left + image.shape[1]] = image.expand(-1, -1, channels)
        ax.text(
            left + width / 2,
            top - 0.5,
            f"{names[pred]} ({names[label]})",
            ha="center",
            va="bottom",
            fontsize=7,
            color="green" if pred == label else "red",
        )
    ax.imshow((canvas.squeeze(-1) if channels == 1 else canvas).numpy(), cmap="gray", vmin=0, vmax=1)
    fig.tight_layout()
    return fig
