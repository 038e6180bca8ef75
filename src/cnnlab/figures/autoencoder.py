"""Autoencoder figures: grids of input / noisy input / reconstruction, and the bottleneck codes in 2-D."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchvision.utils import make_grid

from cnnlab.figures import FigureCallback


class AutoencoderFigures(FigureCallback):
    """Logs the first validation batch's reconstructions every epoch; at test, a grid and the codes' PCA.

    The codes come from the network's ``encode`` (networks without one get no code figure), coloured by
    the images' class where the data has labels.
    """

    def __init__(self, num_samples: int = 16, max_codes: int = 2000) -> None:
        self.num_samples, self.max_codes = num_samples, max_codes
        self.codes: list[Tensor] = []
        self.labels: list[Tensor] = []

    def start(self, stage: str, pl_module: L.LightningModule) -> None:
        self.codes, self.labels = [], []

    def collect(
        self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        writer = self.writer(pl_module.trainer)
        if writer is None:
            return
        if batch_idx == 0:
            grid = reconstruction_grid(outputs, self.num_samples)
            writer.add_image(f"{stage}/reconstructions", grid, pl_module.trainer.global_step)
        if stage == "val":
            return
        encode = getattr(pl_module.net, "encode", None)
        room = self.max_codes - sum(len(c) for c in self.codes)
        if encode is None or room <= 0:
            return
        inputs = outputs["inputs"][:room]
        self.codes.append(encode(inputs).flatten(1).float().cpu())
        if "label" in outputs["targets"]:
            self.labels.append(outputs["targets"]["label"][:room].cpu())

    def finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if stage == "val" or writer is None or not self.codes:
            return
        codes = torch.cat(self.codes)
        labels = torch.cat(self.labels) if len(self.labels) == len(self.codes) else None
        names = pl_module.contract.get("class_names") or []
        if len(codes) >= 2:
            writer.add_figure("test/codes", codes_figure(codes, labels, names), trainer.global_step)


def reconstruction_grid(outputs: dict[str, Tensor], num_samples: int = 16) -> Tensor:
    """One row each of clean images, noisy inputs (when they differ) and reconstructions: (3, H', W')."""
    rows = [outputs["images"], outputs["inputs"], outputs["reconstructions"]]
    if outputs["inputs"] is outputs["images"]:
        rows.pop(1)
    n = min(num_samples, len(rows[0]))
    shown = torch.cat([row[:n].detach().float().clamp(0, 1).cpu() for row in rows])
    return make_grid(shown, nrow=n, padding=2, pad_value=1.0)


def project_2d(codes: Tensor) -> Tensor:
    """The codes (N, D) projected on their first two principal components (N, 2)."""
    q = min(2, codes.shape[1], codes.shape[0])
    centred = codes - codes.mean(dim=0)
    _, _, v = torch.pca_lowrank(centred, q=q, center=False)
    points = centred @ v[:, :q]
    return torch.nn.functional.pad(points, [0, 2 - q])  # a one-number code is drawn on a line


def codes_figure(codes: Tensor, labels: Tensor | None, names: list[str]) -> plt.Figure:
    """The bottleneck codes on their first two principal components, one colour per class."""
    points = project_2d(codes).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
    else:
        cmap = plt.get_cmap("tab10" if int(labels.max()) < 10 else "tab20")
        for value in sorted(set(labels.tolist())):
            picked = (labels == value).numpy()
            name = names[value] if 0 <= value < len(names) else str(value)
            ax.scatter(
                points[picked, 0], points[picked, 1], s=6, alpha=0.7, color=cmap(value % cmap.N), label=name
            )
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set(xlabel="principal component 1", ylabel="principal component 2", title="bottleneck codes (PCA)")
    fig.tight_layout()
    return fig
