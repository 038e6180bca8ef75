"""Anomaly detection figures at test time: the score histogram with the threshold, and the highest-scoring
images with their reconstructions, anomaly maps and (where the data has them) true defect masks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from cnnlab.figures import FigureCallback


class AnomalyFigures(FigureCallback):
    """Logs ``test/score_histogram`` and ``test/top_anomalies`` (the ``num_top`` highest scores)."""

    stages = ("test",)

    def __init__(self, num_top: int = 8) -> None:
        self.num_top = num_top
        self.scores: list[Tensor] = []
        self.flags: list[Tensor] = []
        self.top: list[dict[str, Any]] = []

    def start(self, stage: str, pl_module: L.LightningModule) -> None:
        self.scores, self.flags, self.top = [], [], []

    def collect(
        self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        scores, targets = outputs["scores"].detach().cpu(), outputs["targets"]
        self.scores.append(scores)
        self.flags.append(targets["anomaly"].cpu())
        for i in scores.topk(min(self.num_top, len(scores))).indices.tolist():
            item = {
                "score": float(scores[i]),
                "anomaly": int(targets["anomaly"][i]),
                "label": int(targets["label"][i]) if "label" in targets else None,
                "image": outputs["images"][i].detach().cpu(),
                "reconstruction": outputs["scored_reconstructions"][i].detach().cpu(),
                "map": outputs["maps"][i].detach().cpu(),
                "mask": targets["mask"][i].cpu() if "mask" in targets else None,
            }
            self.top.append(item)
        self.top = sorted(self.top, key=lambda item: item["score"], reverse=True)[: self.num_top]

    def finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None or not self.scores:
            return
        threshold = getattr(pl_module, "threshold", None)
        scores, flags = torch.cat(self.scores), torch.cat(self.flags)
        step = trainer.global_step
        writer.add_figure("test/score_histogram", histogram_figure(scores, flags, threshold), step)
        names = pl_module.contract.get("class_names") or []
        writer.add_figure("test/top_anomalies", top_figure(self.top, names, threshold), step)


def histogram_figure(scores: Tensor, flags: Tensor, threshold: float | None) -> plt.Figure:
    """Histograms of the normal and the anomalous images' scores on shared bins, and the threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(scores.numpy(), bins=40)
    for flag, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        picked = scores[flags == flag].numpy()
        if len(picked):
            ax.hist(picked, bins=bins, alpha=0.6, color=colour, label=f"{name} ({len(picked)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def top_figure(top: list[dict[str, Any]], names: list[str], threshold: float | None) -> plt.Figure:
    """Columns of the highest-scoring images: image, reconstruction, anomaly map and true mask (if any)."""
    with_masks = any(item["mask"] is not None for item in top)
    rows = 4 if with_masks else 3
    cols = max(1, len(top))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for col, item in enumerate(top):
        label = item["label"]
        kind = (
            names[label]
            if label is not None and 0 <= label < len(names)
            else ("anomalous" if item["anomaly"] else "normal")
        )
        flagged = threshold is not None and item["score"] >= threshold
        title = f"{kind}\nscore {item['score']:.3g}{', flagged' if flagged else ''}"
        # red: truly anomalous, green: normal (a false alarm when flagged)
        axes[0, col].set_title(title, fontsize=7, color="red" if item["anomaly"] else "green")
        for row, picture in enumerate((item["image"], item["reconstruction"])):
            shown = picture.clamp(0, 1).permute(1, 2, 0)
            axes[row, col].imshow((shown.squeeze(-1) if shown.shape[-1] == 1 else shown).numpy(), cmap="gray")
        axes[2, col].imshow(item["map"].numpy(), cmap="inferno")
        if with_masks and item["mask"] is not None:
            axes[3, col].imshow((item["mask"] == 1).numpy(), cmap="gray", vmin=0, vmax=1)
    for row, name in enumerate(["image", "reconstruction", "anomaly map", "true defect"][:rows]):
        axes[row, 0].text(
            -0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=7
        )
    fig.tight_layout()
    return fig
