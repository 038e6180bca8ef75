"""Anomaly detectors for production: an anomaly map and score per image, with the threshold chosen on
validation; predict prints the images sorted by score with the decision.

``anomaly_map`` and ``image_scores`` are the one implementation of the score: the anomaly task trains and
evaluates with them, the exported model runs them.
"""

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.serving import autoencoder
from cnnlab.serving.autoencoder import output_path, save_png

OUTPUT = (
    "(scores (N,), maps (N, image_size, image_size)): each image's anomaly score and its per-pixel squared "
    "reconstruction error; an image is anomalous when its score >= threshold"
)
#: how a map becomes one score per image: its mean, its maximum, or the mean of its highest pixels
REDUCTIONS = ("mean", "max", "topk")


def anomaly_map(images: Tensor, reconstructions: Tensor) -> Tensor:
    """The squared reconstruction error of each pixel, averaged over channels (N, H, W), in [0, 1]."""
    return (reconstructions - images).pow(2).mean(dim=1)


def image_scores(maps: Tensor, reduction: str, top_fraction: float) -> Tensor:
    """One anomaly score per image (N,) from its map: mean, max, or ``topk`` (mean of the top fraction)."""
    flat = maps.flatten(1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "topk":
        k = max(1, int(round(flat.shape[1] * top_fraction)))
        return flat.topk(k, dim=1).values.mean(dim=1)
    return flat.mean(dim=1)


class Exported(autoencoder.Exported):
    """Preprocessing + autoencoder + anomaly map and score, with the threshold and input contract inside."""

    # class-level annotations (real types, not postponed strings): TorchScript types the attributes from them
    threshold: float
    score: str
    top_fraction: float

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        if contract.get("threshold") is None:
            raise ValueError(
                "the checkpoint carries no anomaly threshold: it is chosen at the end of each validation "
                "epoch, so export a checkpoint written after one (checkpoints/best.ckpt)"
            )
        super().__init__(net, contract)
        self.serving = __name__
        self.threshold = float(contract["threshold"])
        self.score = str(contract.get("score", "mean"))
        self.top_fraction = float(contract.get("top_fraction", 0.01))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() == 3:
            images = images.unsqueeze(0)
        x = self.preprocess(images)
        maps = anomaly_map(x, self.net(x))
        return image_scores(maps, self.score, self.top_fraction), maps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for anomaly detectors."""
    parser.add_argument(
        "--threshold", type=float, default=None, help="flag scores >= this (default: the model's own)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write each anomaly map as <out>/<image name>.png (white = high)",
    )


@torch.inference_mode()
def show(
    model: torch.jit.ScriptModule, images: Iterable[tuple[Path, Tensor]], args: argparse.Namespace
) -> None:
    """Print the images sorted by score, highest first, each with its decision; then the threshold used."""
    threshold = float(model.threshold if args.threshold is None else args.threshold)
    scored = []
    for path, image in images:
        scores, maps = model(image)
        scored.append((float(scores[0]), path, maps[0]))
    scored.sort(key=lambda row: row[0], reverse=True)
    # one scale for every map of the call, so that brighter means a larger error across images
    top = max((float(m.max()) for _, _, m in scored), default=0.0) or 1.0
    used: set[Path] = set()
    for score, path, amap in scored:
        line = f"{path}: score {score:.6f} {'ANOMALOUS' if score >= threshold else 'normal'}"
        if args.out is not None:
            written = output_path(args.out, path, used)
            save_png(amap / top, written)
            line += f" -> {written}"
        print(line)
    flagged = sum(score >= threshold for score, _, _ in scored)
    source = "given" if args.threshold is not None else "chosen on validation"
    print(f"threshold {threshold:.6f} ({source}): {flagged} of {len(scored)} images anomalous")
